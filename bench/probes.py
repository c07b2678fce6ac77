"""Probe traffic: what ollamux asks a box in the background, idle and under load.

A box that counts what it receives (``bench/_countbox.py``: the simulated box with a
counter per path), ollamux in front of it with its default probe intervals, and windows
of the same length, alternating: idle, then 64 clients in a closed loop through ollamux.
The probe requests (``/api/ps``, ``/api/tags``, ``/api/version``) the box received in
each window must not grow with the request rate.

    python bench/probes.py              # about 50 s
"""

from __future__ import annotations

import time
from typing import Any

from _harness import QUIET_GATE, ROOT, Stack, get_json, load, parse, report, wait_quiet

DEFAULTS: dict[str, Any] = {"window": 10.0, "rounds": 2, "concurrency": 64}
SMOKE: dict[str, Any] = {"window": 1.0, "rounds": 1}
PROBES = ("/api/ps", "/api/tags", "/api/version")


def counts(box_url: str) -> dict[str, int]:
    got = get_json(box_url + "/bench/counts")
    return {path: int(got.get(path, 0)) for path in (*PROBES, "/api/chat")}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def main() -> None:
    args = parse(__doc__ or "", DEFAULTS, SMOKE)
    extra: dict[str, Any] = {"probe": {"ps": 0.25, "tags": 1.0}} if args.smoke else {}
    windows: list[dict[str, Any]] = []
    with Stack() as stack:
        box = stack.box(box_script=str(ROOT / "bench" / "_countbox.py"))
        ox = stack.ollamux([box], server=args.server, **extra)
        time.sleep(min(2.0, args.window))  # past start-up's first probes
        for _ in range(args.rounds):
            if QUIET_GATE["on"]:
                wait_quiet()  # here, not inside the window
            before = counts(box.url)
            started = time.monotonic()
            served = load(
                "capacity",
                [ox.url],
                concurrency=args.concurrency,
                seconds=args.window,
                warmup=0,
                rounds=1,
                gate=False,
            )
            length = time.monotonic() - started
            loaded = delta(counts(box.url), before)
            before = counts(box.url)
            time.sleep(length)
            idle = delta(counts(box.url), before)
            rate = served["runs"][0][0]["requests_per_s"]
            windows.append(
                {"seconds": round(length, 2), "idle": idle, "loaded": loaded, "rps": rate}
            )

    def total(kind: str, path: str) -> int:
        return sum(w[kind][path] for w in windows)

    probes = {
        kind: {path: total(kind, path) for path in PROBES}
        | {"all": sum(total(kind, p) for p in PROBES)}
        for kind in ("idle", "loaded")
    }
    seconds = round(sum(w["seconds"] for w in windows), 1)
    results = {
        "window_seconds": seconds,
        "probe_requests": probes,
        "inference_requests": {k: total(k, "/api/chat") for k in ("idle", "loaded")},
        "windows": windows,
    }
    lines = [
        f"{'':28}{'idle':>10}{'loaded':>10}   ({args.rounds} windows of each kind,"
        f" {seconds} s in all per kind)",
        *(
            f"{path + ' probes':28}{probes['idle'][path]:>10}{probes['loaded'][path]:>10}"
            for path in PROBES
        ),
        f"{'all probes':28}{probes['idle']['all']:>10}{probes['loaded']['all']:>10}",
        f"{'/api/chat served':28}{results['inference_requests']['idle']:>10}"
        f"{results['inference_requests']['loaded']:>10}",
    ]
    report("probes", args, results, lines)


if __name__ == "__main__":
    main()
