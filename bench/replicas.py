"""Replicas: what sharing one fleet through Redis costs (``shared_state``).

One instant simulated box, a loopback ``redis-server`` (persistence off), and ollamux
processes in front of the box, each as a user would start it (``python app.py``):

- added latency: one client, one non-streaming /api/chat at a time, alternating request
  by request between a replica with ``shared_state`` and one without (in memory);
  added = shared - memory (p50, p99): the reservation's round trip, the release and the
  broadcasts;
- capacity: 64 clients in a closed loop spread over 1, 2 and 3 replicas sharing the fleet
  (client i talks to replica i mod n, as behind a load balancer), and the in-memory
  replica alone for reference.

Every process shares this machine's cores, so more replicas also means less CPU for each.

    python bench/replicas.py                # about a minute
    python bench/replicas.py --json replicas.json
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Any

from _harness import Stack, free_port, load, parse, ratio, report

DEFAULTS: dict[str, Any] = {
    "serial_requests": 3000,
    "concurrency": 64,
    "seconds": 3.0,
    "warmup": 0.5,
    "rounds": 3,
}
SMOKE: dict[str, Any] = {
    "serial_requests": 50,
    "seconds": 0.3,
    "warmup": 0.1,
    "rounds": 1,
}


def start_redis(stack: Stack) -> str:
    """A redis-server of its own on a free loopback port, stopped with the stack."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("bench/replicas.py needs redis-server (apt-get install redis-server)")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, cwd=stack.dir, stdout=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    stack.callback(stop)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def main() -> None:
    args = parse(__doc__ or "", DEFAULTS, SMOKE)
    with Stack() as stack:
        redis = start_redis(stack)
        box = stack.box()
        memory = stack.ollamux([box], server=args.server, name="memory")
        replicas = [
            stack.ollamux(
                [box],
                server=args.server,
                name=f"replica-{i}",
                shared_state={"redis": redis, "replica": f"replica-{i}"},
            )
            for i in range(3)
        ]
        serial = load(
            "serial",
            [replicas[0].url, memory.url],
            requests=args.serial_requests,
            warmup=200 if not args.smoke else 10,
        )
        flags = {
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
        }
        capacity: dict[str, Any] = {}
        alone = load("spread", [memory.url], [memory.proc, box.proc], **flags)
        capacity["memory, 1 replica"] = alone
        for n in (1, 2, 3):
            procs = [r.proc for r in replicas[:n]] + [box.proc]
            urls = [r.url for r in replicas[:n]]
            capacity[f"redis, {n} replica{'s' if n > 1 else ''}"] = load(
                "spread", urls, procs, **flags
            )

    shared_lat, memory_lat = serial["latency_ms"]
    added = {
        "p50": round(shared_lat["p50"] - memory_lat["p50"], 3),
        "p99": round(shared_lat["p99"] - memory_lat["p99"], 3),
    }
    per_s = {name: run["requests_per_s"][0] for name, run in capacity.items()}
    base = per_s["memory, 1 replica"]
    results: dict[str, Any] = {
        "server": args.server or "default",
        "serial_latency_ms": {"shared": shared_lat, "memory": memory_lat},
        "added_latency_ms": added,
        "capacity": {
            "concurrency": args.concurrency,
            "requests_per_s": per_s,
            "ratio_to_memory": {name: ratio(v, base) for name, v in per_s.items()},
            "cpu_percent": {name: run["cpu_percent"] for name, run in capacity.items()},
            "runs": {name: run["runs"] for name, run in capacity.items()},
        },
    }
    lines = [
        f"{'':34}{'shared':>12}{'memory':>12}{'added':>12}",
        f"{'serial latency p50 (ms)':34}{shared_lat['p50']:>12.3f}{memory_lat['p50']:>12.3f}"
        f"{'+' + format(added['p50'], '.3f'):>12}",
        f"{'serial latency p99 (ms)':34}{shared_lat['p99']:>12.3f}{memory_lat['p99']:>12.3f}"
        f"{'+' + format(added['p99'], '.3f'):>12}",
        f"capacity, {args.concurrency} clients over the replicas (req/s, ratio to memory):",
        *(
            f"  {name:32}{v:>12.0f}{results['capacity']['ratio_to_memory'][name]:>12.2f}"
            for name, v in per_s.items()
        ),
    ]
    report("replicas", args, results, lines)


if __name__ == "__main__":
    main()
