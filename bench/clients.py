"""Choosing the upstream client and the ASGI server: minimal relays and ollamux, measured.

Each minimal relay (``bench/_relay.py``) is a one-route Starlette app forwarding to the
box with one pooled client; what ollamux costs on top of the relay with its own client is
its routing and bookkeeping. ollamux is measured with each ``--server``. Clients and
servers that are not installed are skipped (``pip install -e '.[bench]'`` has them all).
Capacity rounds are interleaved across all targets, the box directly included.

    python bench/clients.py                  # about two minutes
    python bench/clients.py --only aiohttp,pyreqwest
"""

from __future__ import annotations

import importlib.util
import statistics
from typing import Any

from _harness import PY, ROOT, Proc, Stack, free_port, load, parse, ratio, report

DEFAULTS: dict[str, Any] = {
    "rounds": 3,
    "seconds": 2.0,
    "warmup": 0.5,
    "concurrency": 64,
    "serial_requests": 1000,
    "stream_tokens": 50000,
    "only": "",
}
SMOKE: dict[str, Any] = {
    "rounds": 1,
    "seconds": 0.3,
    "warmup": 0.1,
    "concurrency": 8,
    "serial_requests": 20,
    "stream_tokens": 1000,
    "only": "aiohttp,ollamux",  # both servers, one client: the paths that ship
}
# (target name, relay client or None for ollamux, server, modules it needs)
TARGETS = [
    ("relay aiohttp", "aiohttp", "uvicorn", ["aiohttp"]),
    ("relay httpx", "httpx", "uvicorn", ["httpx"]),
    ("relay httpx2", "httpx2", "uvicorn", ["httpx2"]),
    ("relay aiosonic", "aiosonic", "uvicorn", ["aiosonic"]),
    ("relay pyreqwest", "pyreqwest", "uvicorn", ["pyreqwest"]),
    ("relay curl_cffi", "curl_cffi", "uvicorn", ["curl_cffi"]),
    ("relay aiohttp, granian", "aiohttp", "granian", ["aiohttp", "granian"]),
    ("ollamux, uvicorn", None, "uvicorn", []),
    ("ollamux, granian", None, "granian", ["granian"]),
]


def installed(modules: list[str]) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def main() -> None:
    args = parse(__doc__ or "", DEFAULTS, SMOKE)
    only = {o.strip() for o in args.only.split(",") if o.strip()}
    wanted = [
        t
        for t in TARGETS
        if installed(t[3]) and (not only or (t[1] or "ollamux") in only or t[2] in only)
    ]
    skipped = [t[0] for t in TARGETS if not installed(t[3])]
    with Stack() as stack:
        box = stack.box()
        targets: list[tuple[str, str, Proc]] = [("direct", box.url, box.proc)]
        for name, client, server, _ in wanted:
            if client is None:
                ox = stack.ollamux([box], server=server, name=f"ollamux-{server}")
                targets.append((name, ox.url, ox.proc))
                continue
            port = free_port()
            argv = [PY, str(ROOT / "bench" / "_relay.py"), "--client", client]
            argv += ["--server", server, "--box", box.url, "--port", str(port)]
            url = f"http://127.0.0.1:{port}"
            proc = stack.start(name.replace(" ", "-").replace(",", ""), argv, url + "/none")
            targets.append((name, url, proc))
        urls = [t[1] for t in targets]
        serial = load("serial", urls, requests=args.serial_requests, warmup=10)
        stream = load("stream", urls, tokens=args.stream_tokens, rounds=1 if args.smoke else 2)
        runs: list[list[dict[str, Any]]] = [[] for _ in targets]
        for r in range(args.rounds):
            order = list(range(len(targets)))
            for k in order if r % 2 == 0 else order[::-1]:
                result = load(
                    "capacity",
                    [urls[k]],
                    [targets[k][2]],
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    warmup=args.warmup,
                    rounds=1,
                )
                run = result["runs"][0][0]
                run["cpu_us_per_request"] = result["cpu_us_per_request"][targets[k][2].name]
                runs[k].append(run)

    rows: dict[str, dict[str, Any]] = {}
    direct_rps = statistics.median(r["requests_per_s"] for r in runs[0])
    direct_lat = serial["latency_ms"][0]["p50"]
    direct_cps = stream["chunks_per_s"][0]
    for k, (name, _, _) in enumerate(targets):
        rps = statistics.median(r["requests_per_s"] for r in runs[k])
        rows[name] = {
            "requests_per_s": rps,
            "capacity_ratio": ratio(rps, direct_rps),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs[k]),
            "serial_p50_ms": serial["latency_ms"][k]["p50"],
            "added_p50_ms": round(serial["latency_ms"][k]["p50"] - direct_lat, 3),
            "stream_chunks_per_s": stream["chunks_per_s"][k],
            "stream_ratio": ratio(stream["chunks_per_s"][k], direct_cps),
            "runs": runs[k],
        }
    results = {"targets": rows, "skipped_not_installed": skipped, "concurrency": args.concurrency}
    header = f"{'':26}{'req/s':>8}{'ratio':>7}{'CPU us/req':>11}{'+p50 ms':>9}{'stream':>8}"
    lines = [header]
    for name, row in rows.items():
        lines.append(
            f"{name:26}{row['requests_per_s']:>8.0f}{row['capacity_ratio']:>7.2f}"
            f"{row['cpu_us_per_request']:>11.0f}{row['added_p50_ms']:>9.3f}{row['stream_ratio']:>8.2f}"
        )
    lines.append("ratio: capacity vs the box directly; stream: one stream's chunks/s vs directly")
    if skipped:
        lines.append(f"not installed, skipped: {', '.join(skipped)}")
    report("clients", args, results, lines)


if __name__ == "__main__":
    main()
