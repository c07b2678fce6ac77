"""Overhead: what ollamux adds to talking to one simulated box directly.

One box answering instantly (``python -m ollamux.backends.sim.ollama``), ollamux in front of it
(``python app.py``), and the load generator (``bench/_load.py``), three processes on
loopback sharing the machine's cores. Every figure is measured for ollamux and for the
box directly in the same run, interleaved, and reported as a ratio:

- serial latency: one client, one non-streaming /api/chat at a time, alternating
  request by request between ollamux and the box; added = ollamux - direct (p50, p99);
- capacity: 64 clients in a closed loop, non-streaming /api/chat, alternating rounds;
- one long stream: /api/chat streaming N tokens, chunks (NDJSON lines) per second as
  the client receives them, alternating streams;
- one long ``/v1`` stream: the same stream asked of ollamux at /v1/chat/completions (the
  box speaks only Ollama's API, so ollamux translates each chunk to an OpenAI event)
  against the box's own /api/chat: events per second against chunks per second.

    python bench/overhead.py                # about a minute
    python bench/overhead.py --server granian --json overhead.json
"""

from __future__ import annotations

import statistics
from typing import Any

from _harness import Stack, load, parse, ratio, report

DEFAULTS: dict[str, Any] = {
    "serial_requests": 3000,
    "concurrency": 64,
    "seconds": 3.0,
    "warmup": 0.5,
    "rounds": 5,
    "stream_tokens": 100000,
    "stream_rounds": 5,
}
SMOKE: dict[str, Any] = {
    "serial_requests": 50,
    "seconds": 0.3,
    "warmup": 0.1,
    "rounds": 1,
    "stream_tokens": 2000,
    "stream_rounds": 1,
}


def capacity(stack_procs: list[Any], urls: list[str], args: Any) -> dict[str, Any]:
    """Rounds of ``args.seconds`` per URL, the order flipped each round; medians."""
    runs: list[list[dict[str, Any]]] = [[] for _ in urls]
    for r in range(args.rounds):
        order = list(range(len(urls)))
        for k in order if r % 2 == 0 else order[::-1]:
            result = load(
                "capacity",
                [urls[k]],
                stack_procs,
                concurrency=args.concurrency,
                seconds=args.seconds,
                warmup=args.warmup,
                rounds=1,
            )
            run = result["runs"][0][0]
            run["cpu_percent"] = result["cpu_percent"]
            runs[k].append(run)
    medians = [statistics.median(x["requests_per_s"] for x in rs) for rs in runs]
    return {"runs": runs, "requests_per_s": medians}


def median_cpu(runs: list[dict[str, Any]]) -> dict[str, float]:
    names = runs[0]["cpu_percent"].keys()
    return {n: round(statistics.median(r["cpu_percent"][n] for r in runs), 1) for n in names}


def main() -> None:
    args = parse(__doc__ or "", DEFAULTS, SMOKE)
    with Stack() as stack:
        box = stack.box()
        ox = stack.ollamux([box], server=args.server)
        urls = [ox.url, box.url]
        procs = [ox.proc, box.proc]
        serial = load(
            "serial", urls, requests=args.serial_requests, warmup=200 if not args.smoke else 10
        )
        cap = capacity(procs, urls, args)
        stream = load("stream", urls, tokens=args.stream_tokens, rounds=args.stream_rounds)
        v1 = load(
            "stream", urls, tokens=args.stream_tokens, rounds=args.stream_rounds, v1_first=True
        )

    (ox_lat, box_lat) = serial["latency_ms"]
    results: dict[str, Any] = {
        "server": args.server or "default",
        "serial_latency_ms": {"ollamux": ox_lat, "direct": box_lat},
        "added_latency_ms": {
            "p50": round(ox_lat["p50"] - box_lat["p50"], 3),
            "p99": round(ox_lat["p99"] - box_lat["p99"], 3),
        },
        "capacity": {
            "concurrency": args.concurrency,
            "requests_per_s": {
                "ollamux": cap["requests_per_s"][0],
                "direct": cap["requests_per_s"][1],
            },
            "ratio": ratio(cap["requests_per_s"][0], cap["requests_per_s"][1]),
            "cpu_percent": {
                "ollamux": median_cpu(cap["runs"][0]),
                "direct": median_cpu(cap["runs"][1]),
            },
            "runs": {"ollamux": cap["runs"][0], "direct": cap["runs"][1]},
        },
        "stream": {
            "tokens": args.stream_tokens,
            "chunks_per_s": {
                "ollamux": stream["chunks_per_s"][0],
                "direct": stream["chunks_per_s"][1],
            },
            "ratio": ratio(stream["chunks_per_s"][0], stream["chunks_per_s"][1]),
            "runs": {"ollamux": stream["runs"][0], "direct": stream["runs"][1]},
        },
        "v1_stream": {
            "tokens": args.stream_tokens,
            "chunks_per_s": {"ollamux": v1["chunks_per_s"][0], "direct": v1["chunks_per_s"][1]},
            "ratio": ratio(v1["chunks_per_s"][0], v1["chunks_per_s"][1]),
            "runs": {"ollamux": v1["runs"][0], "direct": v1["runs"][1]},
        },
    }
    c, s, v = results["capacity"], results["stream"], results["v1_stream"]
    lines = [
        f"{'':34}{'ollamux':>12}{'direct':>12}{'ratio / added':>16}",
        f"{'serial latency p50 (ms)':34}{ox_lat['p50']:>12.3f}{box_lat['p50']:>12.3f}"
        f"{'+' + format(results['added_latency_ms']['p50'], '.3f'):>16}",
        f"{'serial latency p99 (ms)':34}{ox_lat['p99']:>12.3f}{box_lat['p99']:>12.3f}"
        f"{'+' + format(results['added_latency_ms']['p99'], '.3f'):>16}",
        f"{f'capacity, {args.concurrency} clients (req/s)':34}"
        f"{c['requests_per_s']['ollamux']:>12.0f}{c['requests_per_s']['direct']:>12.0f}{c['ratio']:>16.2f}",
        f"{'one stream (chunks/s)':34}"
        f"{s['chunks_per_s']['ollamux']:>12.0f}{s['chunks_per_s']['direct']:>12.0f}{s['ratio']:>16.2f}",
        f"{'one /v1 stream (events/s)':34}"
        f"{v['chunks_per_s']['ollamux']:>12.0f}{v['chunks_per_s']['direct']:>12.0f}{v['ratio']:>16.2f}",
        f"CPU % during capacity rounds (medians), ollamux rounds: {c['cpu_percent']['ollamux']}",
        f"CPU % during capacity rounds (medians), direct rounds:  {c['cpu_percent']['direct']}",
    ]
    report("overhead", args, results, lines)


if __name__ == "__main__":
    main()
