"""Memory: ollamux's resident set (VmRSS) while it holds 1,000 concurrent streams.

A simulated box with room for all of them (``--num-parallel``) that writes one token a
second per stream, ollamux in front of it with as many slots, and the load generator
holding every stream open until told to hang up. ollamux's VmRSS is read from
``/proc/PID/status`` idle, every quarter second while all streams are open (the peak is
reported), and again after the clients hung up.

    python bench/memory.py              # about 30 s
    python bench/memory.py --streams 2000
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from _harness import PY, ROOT, Stack, parse, report

DEFAULTS: dict[str, Any] = {"streams": 1000, "hold": 10.0, "tokens_per_s": 1.0}
SMOKE: dict[str, Any] = {"streams": 50, "hold": 1.0}


def main() -> None:
    args = parse(__doc__ or "", DEFAULTS, SMOKE)
    with Stack() as stack:
        box = stack.box(
            num_parallel=args.streams + 16,
            max_queue=args.streams + 16,
            tokens_per_s=args.tokens_per_s,
        )
        ox = stack.ollamux([box], server=args.server, slots=args.streams + 16)
        idle_mb = ox.proc.rss_mb()
        # Long enough to outlast opening every stream and the hold; not longer, since the
        # box prepares a whole answer before its first token.
        tokens = int((args.hold + 60) * args.tokens_per_s)
        hold = ["--url", ox.url, "--seconds", "600", "--streams", str(args.streams)]
        generator = subprocess.Popen(
            [PY, str(ROOT / "bench" / "_load.py"), "hold", *hold, "--tokens", str(tokens)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert generator.stdout is not None and generator.stdin is not None
        ready = json.loads(generator.stdout.readline())
        samples: list[float] = []
        box_mb = box.proc.rss_mb()
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            samples.append(ox.proc.rss_mb())
            time.sleep(0.25)
        generator.stdin.close()  # hang up on every stream
        held = json.loads(generator.stdout.read().decode().strip().splitlines()[-1])
        generator.wait(30)
        time.sleep(2.0)
        after_mb = ox.proc.rss_mb()

    peak = max(samples)
    results = {
        "streams": args.streams,
        "all_open": ready["ready"] == args.streams and ready["statuses"] == [200],
        "statuses": ready["statuses"],
        "rss_mb": {
            "idle": round(idle_mb, 1),
            "holding_peak": round(peak, 1),
            "holding_last": round(samples[-1], 1),
            "after_hang_up": round(after_mb, 1),
        },
        "kb_per_stream": round((peak - idle_mb) * 1024 / args.streams, 1),
        "box_rss_mb_holding": round(box_mb, 1),
        "chunks_relayed_while_held": held["chunks_received"],
        "hold_seconds": args.hold,
    }
    rss = results["rss_mb"]
    lines = [
        f"ollamux VmRSS idle                 {rss['idle']:8.1f} MB",
        f"ollamux VmRSS, {args.streams} streams open  {rss['holding_peak']:8.1f} MB (peak)"
        f"  = {results['kb_per_stream']} KB per stream",
        f"ollamux VmRSS after hang-up        {rss['after_hang_up']:8.1f} MB",
        f"all {args.streams} streams answered 200: {results['all_open']};"
        f" chunks relayed while held: {held['chunks_received']}",
    ]
    report("memory", args, results, lines)


if __name__ == "__main__":
    main()
