"""Routing quality: ollamux against random and round-robin balancers on a simulated cluster.

Three simulated Ollama boxes (each its own process) advertise six models; each box can
hold two loaded (a different pair preloaded on each), with two slots per model, a load
time, a decode rate and a prompt-eval rate, so cold loads and cold prompt caches cost
what they cost on a GPU, scaled down. Conversations pick a model with skewed (Zipf)
popularity, arrive spread over a window and take several turns each, the history
growing every turn. The same workload (same seed) runs against:

- ``ollamux``: the default (waiting room, affinity, slot-aware order);
- ``ollamux, queue+affinity off``: the card's order alone;
- ``random`` and ``round-robin``: the client picks a box per request, as a plain
  load balancer would (no proxy cost at all: a generous baseline).

Each scenario gets fresh boxes. Reported: makespan, p50/p95 latency and time to first
token, model loads, and the prefix-cache hit ratio of follow-up turns.

    python bench/routing_quality.py               # about two minutes
    python bench/routing_quality.py --smoke       # seconds; figures mean nothing
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from _harness import Stack, get_json, parse, ratio, report

DEFAULTS: dict[str, Any] = {
    "conversations": 8,  # --conversations 12 overloads the popular model's box
    "turns": 6,
    "window": 4.0,  # seconds over which conversations start
    "think": 0.5,  # seconds between a reply and the next turn
    "tokens": 32,
    "load_time": 2.0,
    "tokens_per_s": 40.0,
    "prompt_tokens_per_s": 400.0,
    "seed": 7,
}
SMOKE: dict[str, Any] = {
    "conversations": 4,
    "turns": 2,
    "window": 0.5,
    "think": 0.0,
    "tokens": 4,
    "load_time": 0.05,
    "tokens_per_s": 500.0,
    "prompt_tokens_per_s": 5000.0,
}
MODELS = ["llama3.2", "qwen2.5:7b", "mistral:7b", "gemma2:9b", "phi3:mini", "deepseek-r1:8b"]
SYSTEM = " ".join(f"rule{i}" for i in range(150))  # a long system prompt, like agents send


@dataclass
class Turn:
    ttft: float
    latency: float
    ok: bool
    box: str
    follow_up_same_box: bool | None  # None for a first turn


@dataclass
class Result:
    turns: list[Turn] = field(default_factory=list)
    makespan: float = 0.0


def zipf_model(rng: random.Random) -> str:
    weights = [1 / (k + 1) ** 1.2 for k in range(len(MODELS))]
    return rng.choices(MODELS, weights)[0]


async def conversation(
    session: aiohttp.ClientSession, pick: Any, model: str, n: int, args: Any, out: Result
) -> None:
    # Each conversation's own system prompt, so a cache hit is this conversation's prefix.
    messages: list[dict[str, str]] = [{"role": "system", "content": f"agent {n}. {SYSTEM}"}]
    previous = ""
    for turn in range(args.turns):
        question = f"conversation {n} question {turn}: " + " ".join(
            f"w{n}x{turn}x{i}" for i in range(30)
        )
        messages.append({"role": "user", "content": question})
        body = {"model": model, "messages": messages, "options": {"num_predict": args.tokens}}
        started = time.monotonic()
        ttft, answer, ok = None, [], False
        url = pick()
        async with session.post(url + "/api/chat", data=orjson.dumps(body)) as resp:
            box = resp.headers.get("x-ollamux-endpoint", url)
            async for line in resp.content:
                if ttft is None:
                    ttft = time.monotonic() - started
                if line.strip():
                    chunk = orjson.loads(line)
                    answer.append(chunk.get("message", {}).get("content", ""))
                    ok = ok or (bool(chunk.get("done")) and "error" not in chunk)
        latency = time.monotonic() - started
        same = None if turn == 0 else box == previous
        previous = box
        out.turns.append(
            Turn(
                ttft if ttft is not None else latency, latency, ok and resp.status == 200, box, same
            )
        )
        messages.append({"role": "assistant", "content": "".join(answer)})
        await asyncio.sleep(args.think)


async def drive(urls: list[str], policy: str, args: Any) -> Result:
    rng = random.Random(args.seed)
    picker = random.Random(args.seed + 1)
    cycle = itertools.cycle(urls)
    pick = {
        "proxy": lambda: urls[0],
        "random": lambda: picker.choice(urls),
        "round-robin": lambda: next(cycle),
    }[policy]
    plan = [(rng.uniform(0, args.window), zipf_model(rng)) for _ in range(args.conversations)]
    out = Result()
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def start(n: int, at: float, model: str) -> None:
            await asyncio.sleep(at)
            await conversation(session, pick, model, n, args, out)

        began = time.monotonic()
        await asyncio.gather(*(start(n, at, model) for n, (at, model) in enumerate(plan)))
        out.makespan = time.monotonic() - began
    return out


def boxes(stack: Stack, args: Any) -> list[Any]:
    started = []
    for i, name in enumerate(("gpu-a", "gpu-b", "gpu-c")):
        preload = ",".join(MODELS[(2 * i + k) % len(MODELS)] for k in range(2))
        started.append(
            stack.box(
                name,
                models=",".join(MODELS),
                preload=preload,
                num_parallel=2,
                max_loaded=2,
                load_time=args.load_time,
                tokens_per_s=args.tokens_per_s,
                prompt_tokens_per_s=args.prompt_tokens_per_s,
            )
        )
    return started


def box_totals(started: list[Any]) -> dict[str, int]:
    stats = [get_json(b.url + "/sim/stats") for b in started]
    return {
        k: sum(s[k] for s in stats) for k in ("loads", "cache_hits", "cache_misses", "evictions")
    }


def scenario(name: str, args: Any) -> dict[str, Any]:
    with Stack() as stack:
        started = boxes(stack, args)
        if name.startswith("ollamux"):
            extra: dict[str, Any] = {"slots": 2}
            if name != "ollamux":
                extra |= {"queue": {"enabled": False}, "conversation_affinity": False}
            ox = stack.ollamux(started, server=args.server, **extra)
            result = asyncio.run(drive([ox.url], "proxy", args))
        else:
            result = asyncio.run(drive([b.url for b in started], name, args))
        totals = box_totals(started)
    ttfts = sorted(t.ttft for t in result.turns)
    lats = sorted(t.latency for t in result.turns)
    follow_ups = args.conversations * (args.turns - 1)
    return {
        "requests": len(result.turns),
        "failed": sum(not t.ok for t in result.turns),
        "makespan_s": round(result.makespan, 2),
        "latency_p50_s": round(statistics.median(lats), 3),
        "latency_p95_s": round(pct(lats, 95), 3),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": round(pct(ttfts, 95), 3),
        "model_loads": totals["loads"],
        "evictions": totals["evictions"],
        "prefix_cache_hit_ratio": round(totals["cache_hits"] / follow_ups, 3)
        if follow_ups
        else 0.0,
        "follow_ups_on_same_box": round(
            sum(bool(t.follow_up_same_box) for t in result.turns) / follow_ups, 3
        )
        if follow_ups
        else 0.0,
    }


def pct(sorted_values: list[float], p: float) -> float:
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def main() -> None:
    args = parse(__doc__ or "", DEFAULTS, SMOKE)
    names = ["ollamux", "ollamux, queue+affinity off", "random", "round-robin"]
    results = {name: scenario(name, args) for name in names}
    best_baseline = min(results[n]["ttft_p95_s"] for n in ("random", "round-robin"))
    ours = results["ollamux"]
    results["goals"] = {
        "ttft_p95_vs_best_baseline": ratio(ours["ttft_p95_s"], best_baseline),
        "ttft_p95_at_least_30pct_lower": ours["ttft_p95_s"] <= 0.7 * best_baseline,
        "fewer_model_loads_than_baselines": all(
            ours["model_loads"] < results[n]["model_loads"] for n in ("random", "round-robin")
        ),
        "prefix_cache_hit_ratio_at_least_0.8": ours["prefix_cache_hit_ratio"] >= 0.8,
    }
    header = (
        f"{'':28} {'makespan':>9} {'lat p50':>8} {'lat p95':>8} {'ttft p50':>9} {'ttft p95':>9}"
        f" {'loads':>6} {'cache':>6} {'sticky':>6} {'failed':>6}"
    )
    lines = [
        f"{args.conversations} conversations x {args.turns} turns, 3 boxes, 6 models (Zipf), "
        f"2 loaded per box, 2 slots per model",
        header,
    ]
    for name in names:
        r = results[name]
        lines.append(
            f"{name:28} {r['makespan_s']:>8.1f}s {r['latency_p50_s']:>7.2f}s"
            f" {r['latency_p95_s']:>7.2f}s {r['ttft_p50_s']:>8.2f}s {r['ttft_p95_s']:>8.2f}s"
            f" {r['model_loads']:>6} {r['prefix_cache_hit_ratio']:>6.2f}"
            f" {r['follow_ups_on_same_box']:>6.2f} {r['failed']:>6}"
        )
    goals = results["goals"]
    lines.append(
        f"goals: ttft p95 = {goals['ttft_p95_vs_best_baseline']:.2f} x best baseline "
        f"(<= 0.70: {goals['ttft_p95_at_least_30pct_lower']}), fewer loads than baselines: "
        f"{goals['fewer_model_loads_than_baselines']}, "
        f"cache hit >= 0.8: {goals['prefix_cache_hit_ratio_at_least_0.8']}"
    )
    report("routing quality", args, results, lines)


if __name__ == "__main__":
    main()
