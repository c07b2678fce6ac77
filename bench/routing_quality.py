"""Routing quality: ollamux against client-side random and round-robin on simulated boxes.

Three simulated Ollama boxes (each its own process) advertise six chat models; each box
holds at most two loaded (a different pair preloaded on each), with two slots per model,
a load time, a decode rate and a prompt-eval rate for the tokens a slot has not cached,
so cold loads and cold prompt caches cost what they cost on a GPU, scaled down. Users
start within a window and hold their conversations one after another (each with a model
of Zipf popularity, several turns, the history growing every turn); the same workload
(same seed) runs, side by side, against:

- ``random`` and ``round-robin``: the client picks a box per request, as a plain load
  balancer would (no proxy cost at all: a generous baseline);
- ``ollamux``: the default (the card's order, free slots made honest by learned costs,
  waiting room, affinity);
- ``ollamux fastest``: ``routing.strategy: fastest`` (purely by the estimate).

Each run gets fresh boxes and a fresh ollamux, and every system runs each shape with two
seeds. Shapes: ``base`` (the shape above); ``many`` (far more live conversations than
the fleet's slots can cache); ``embed`` (an embeddings flood beside the chat); ``slow``
(one box three times slower than the others); ``hot`` (one model too popular for one
box); ``roomy`` (the base chat with 8 slots per model, so the fleet's slots can cache
every live conversation: where the cache-reuse goal is within reach). Reported per
shape and system (mean of the seeds): makespan, p95 latency, p95 time
to first token, model loads, prefix-cache reuse as a share of the workload's ceiling
(the ceiling: the tokens each turn shares with what its conversation's previous turn
left in a slot's cache, its prompt and answer; reuse: the prompt tokens the box did not
have to evaluate), and for ollamux the estimate's error (the time to first token the
X-Ollamux-Route header says was predicted when the request arrived, against the one the
client measured).

    python bench/routing_quality.py               # about fourteen minutes
    python bench/routing_quality.py --shapes base --seeds 7
    python bench/routing_quality.py --smoke       # seconds; figures mean nothing
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from _harness import Stack, get_json, parse, ratio, report

from ollamux.backends.sim.engine import chat_prompt, common_prefix, token_ids

# The shape at half its time scale (so both seeds of all five shapes run in about
# ten minutes): 0.5 s loads; decode, prefill, think time and arrival window scaled alike.
DEFAULTS: dict[str, Any] = {
    "shapes": "base,many,embed,slow,hot,roomy",
    "seeds": "7,8",
    "users": 24,
    "per_user": 2,  # conversations per user, one after another
    "turns": 4,
    "window": 3.0,  # seconds over which users start
    "think": 0.15,  # seconds between a reply and the next turn
    "tokens": 16,
    "load_time": 0.5,
    "tokens_per_s": 160.0,
    "prompt_tokens_per_s": 2000.0,
}
SMOKE: dict[str, Any] = {
    "shapes": "base,embed",
    "seeds": "7",
    "users": 2,
    "per_user": 1,
    "turns": 2,
    "window": 0.5,
    "think": 0.0,
    "tokens": 4,
    "load_time": 0.05,
    "tokens_per_s": 500.0,
    "prompt_tokens_per_s": 5000.0,
}
MODELS = ["llama3.2", "qwen2.5:7b", "mistral:7b", "gemma2:9b", "phi3:mini", "deepseek-r1:8b"]
EMBED = "nomic-embed-text"
SYSTEM = " ".join(f"rule{i}" for i in range(150))  # a long system prompt, like agents send
SYSTEMS = ["random", "round-robin", "ollamux", "ollamux fastest"]
BASELINES = ("random", "round-robin")
ROUTE_EST = re.compile(r"est ttft ([0-9.]+) s")
ROUTE_ARRIVAL = re.compile(r"on arrival est ttft ([0-9.]+) s")


@dataclass(frozen=True)
class Shape:
    name: str
    what: str
    users_factor: float = 1.0  # times --users
    hot: float = 0.0  # share of conversations on the first model (else Zipf)
    slow_box: bool = False  # gpu-c decodes, prefills and loads three times slower
    embed_workers: int = 0  # clients sending embeddings requests back to back
    embed_requests: int = 0  # each
    think: float | None = None
    slots: int = 2  # per model on every box (OLLAMA_NUM_PARALLEL)


SHAPES = {
    "base": Shape("base", "conversations with Zipf popularity over 6 models"),
    "many": Shape(
        "many",
        "2x the users, slower to reply: far more live conversations than 12 slot caches",
        users_factor=2.0,
        think=0.5,
    ),
    "embed": Shape(
        "embed",
        "the base chat plus 8 clients flooding embeddings (80 requests of 4 texts)",
        embed_workers=8,
        embed_requests=10,
    ),
    "slow": Shape("slow", "the base chat; gpu-c is three times slower", slow_box=True),
    "hot": Shape("hot", "the base chat; 70% of conversations on one model", hot=0.7),
    "roomy": Shape(
        "roomy",
        "the base chat with 8 slots per model: caches for every live conversation",
        slots=8,
    ),
}


@dataclass
class Turn:
    ttft: float
    latency: float
    ok: bool
    prompt: int  # tokens
    reused: int  # prompt tokens the box found cached
    ceiling: int  # prompt tokens shared with the previous turn's prompt and answer
    est_ttft: float | None  # ollamux's prediction when the request arrived


@dataclass
class Result:
    turns: list[Turn] = field(default_factory=list)
    embeds: int = 0
    embed_failed: int = 0
    makespan: float = 0.0


def pick_model(rng: random.Random, shape: Shape) -> str:
    if shape.hot and rng.random() < shape.hot:
        return MODELS[0]
    weights = [1 / (k + 1) ** 1.2 for k in range(len(MODELS))]
    return rng.choices(MODELS, weights)[0]


async def conversation(
    session: aiohttp.ClientSession, pick: Any, model: str, n: int, args: Any, out: Result
) -> None:
    # Each conversation's own system prompt, so a cache hit is this conversation's prefix.
    messages: list[dict[str, str]] = [{"role": "system", "content": f"agent {n}. {SYSTEM}"}]
    left: list[int] = []  # what the previous turn left in its slot: prompt + answer
    for turn in range(args.turns):
        question = f"conversation {n} question {turn}: " + " ".join(
            f"w{n}x{turn}x{i}" for i in range(30)
        )
        messages.append({"role": "user", "content": question})
        body = {"model": model, "messages": messages, "options": {"num_predict": args.tokens}}
        prompt = chat_prompt(body).tokens
        started = time.monotonic()
        ttft, answer, ok, evaluated = None, [], False, len(prompt)
        async with session.post(pick() + "/api/chat", data=orjson.dumps(body)) as resp:
            route = resp.headers.get("x-ollamux-route", "")
            async for line in resp.content:
                if ttft is None:
                    ttft = time.monotonic() - started
                if line.strip():
                    chunk = orjson.loads(line)
                    answer.append(chunk.get("message", {}).get("content", ""))
                    if chunk.get("done"):
                        ok = "error" not in chunk
                        evaluated = int(chunk.get("prompt_eval_count", len(prompt)))
        latency = time.monotonic() - started
        # A request that waited says what was predicted on arrival; one placed at once
        # was predicted on its box when placed, which was on arrival.
        est = ROUTE_ARRIVAL.search(route) or ROUTE_EST.search(route)
        text = "".join(answer)
        out.turns.append(
            Turn(
                ttft=ttft if ttft is not None else latency,
                latency=latency,
                ok=ok and resp.status == 200,
                prompt=len(prompt),
                reused=max(0, len(prompt) - evaluated),
                ceiling=common_prefix(left, prompt),
                est_ttft=float(est.group(1)) if est else None,
            )
        )
        left = prompt + token_ids(text)
        messages.append({"role": "assistant", "content": text})
        await asyncio.sleep(args.think)


async def embed_worker(
    session: aiohttp.ClientSession, pick: Any, n: int, shape: Shape, out: Result
) -> None:
    for i in range(shape.embed_requests):
        texts = [
            f"document {n}-{i}-{k} " + " ".join(f"d{n}x{i}x{j}" for j in range(60))
            for k in range(4)
        ]
        body = {"model": EMBED, "input": texts}
        async with session.post(pick() + "/api/embed", data=orjson.dumps(body)) as resp:
            await resp.read()
            out.embeds += 1
            out.embed_failed += resp.status != 200


async def drive(urls: list[str], system: str, args: Any, shape: Shape, seed: int) -> Result:
    rng = random.Random(seed)
    picker = random.Random(seed + 1)
    cycle = itertools.cycle(urls)
    pick = (
        (lambda: urls[0])
        if system.startswith("ollamux")
        else {"random": lambda: picker.choice(urls), "round-robin": lambda: next(cycle)}[system]
    )
    users = round(args.users * shape.users_factor)
    window = args.window
    # Each user holds its conversations one after another, starting somewhere in the window.
    plan = [
        (rng.uniform(0, window), [pick_model(rng, shape) for _ in range(args.per_user)])
        for _ in range(users)
    ]
    embed_starts = [rng.uniform(0, window) for _ in range(shape.embed_workers)]
    out = Result()
    local = argparse_copy(args, think=shape.think if shape.think is not None else args.think)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def user(u: int, at: float, models: list[str]) -> None:
            await asyncio.sleep(at)
            for k, model in enumerate(models):
                await conversation(session, pick, model, u * args.per_user + k, local, out)

        async def flood(n: int, at: float) -> None:
            await asyncio.sleep(at)
            await embed_worker(session, pick, n, shape, out)

        began = time.monotonic()
        await asyncio.gather(
            *(user(u, at, models) for u, (at, models) in enumerate(plan)),
            *(flood(n, at) for n, at in enumerate(embed_starts)),
        )
        out.makespan = time.monotonic() - began
    return out


def argparse_copy(args: Any, **changes: Any) -> Any:
    copy = type(args)(**vars(args))
    for key, value in changes.items():
        setattr(copy, key, value)
    return copy


def boxes(stack: Stack, args: Any, shape: Shape) -> list[Any]:
    started = []
    models = MODELS + ([EMBED] if shape.embed_workers else [])
    for i, name in enumerate(("gpu-a", "gpu-b", "gpu-c")):
        slow = 3.0 if shape.slow_box and name == "gpu-c" else 1.0
        preload = ",".join(MODELS[(2 * i + k) % len(MODELS)] for k in range(2))
        started.append(
            stack.box(
                name,
                models=",".join(models),
                preload=preload,
                num_parallel=shape.slots,
                max_loaded=2,
                load_time=args.load_time * slow,
                tokens_per_s=args.tokens_per_s / slow,
                prompt_tokens_per_s=args.prompt_tokens_per_s / slow,
            )
        )
    return started


def run(system: str, args: Any, shape: Shape, seed: int) -> dict[str, Any]:
    with Stack() as stack:
        started = boxes(stack, args, shape)
        if system.startswith("ollamux"):
            strategy = "fastest" if system.endswith("fastest") else "default"
            ox = stack.ollamux(
                started, server=args.server, slots=shape.slots, routing={"strategy": strategy}
            )
            result = asyncio.run(drive([ox.url], system, args, shape, seed))
        else:
            result = asyncio.run(drive([b.url for b in started], system, args, shape, seed))
        stats = [get_json(b.url + "/sim/stats") for b in started]
    turns = result.turns
    ttfts = sorted(t.ttft for t in turns)
    lats = sorted(t.latency for t in turns)
    ceiling = sum(t.ceiling for t in turns)
    errors = sorted(abs(t.est_ttft - t.ttft) for t in turns if t.est_ttft is not None)
    return {
        "requests": len(turns) + result.embeds,
        "failed": sum(not t.ok for t in turns) + result.embed_failed,
        "makespan_s": result.makespan,
        "latency_p95_s": pct(lats, 95),
        "ttft_p95_s": pct(ttfts, 95),
        "model_loads": sum(s["loads"] for s in stats),
        "cache_reuse_of_ceiling": min(sum(t.reused for t in turns), ceiling) / ceiling
        if ceiling
        else 0.0,
        "ceiling_share_of_prompt_tokens": ceiling / max(1, sum(t.prompt for t in turns)),
        "estimate_abs_error_p50_s": statistics.median(errors) if errors else None,
        "estimate_abs_error_p90_s": pct(errors, 90) if errors else None,
    }


def pct(sorted_values: list[float], p: float) -> float:
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def mean_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        merged[key] = round(statistics.fmean(values), 3) if values else None
    merged["per_seed"] = runs
    return merged


def goals(rows: dict[str, dict[str, Any]], name: str, shape: str) -> dict[str, Any]:
    ours = rows[name]
    best_ttft = min(rows[b]["ttft_p95_s"] for b in BASELINES)
    best_makespan = min(rows[b]["makespan_s"] for b in BASELINES)
    verdict: dict[str, Any] = {
        "ttft_p95_vs_best_baseline": ratio(ours["ttft_p95_s"], best_ttft),
        "ttft_p95_at_most_0.7": ours["ttft_p95_s"] <= 0.7 * best_ttft,
        "fewer_loads_than_every_baseline": all(
            ours["model_loads"] < rows[b]["model_loads"] for b in BASELINES
        ),
        "cache_reuse_at_least_0.8_of_ceiling": ours["cache_reuse_of_ceiling"] >= 0.8,
        "makespan_vs_best_baseline": ratio(ours["makespan_s"], best_makespan),
        "makespan_no_worse": ours["makespan_s"] <= best_makespan,
    }
    if shape == "base":
        verdict["single_digit_loads"] = ours["model_loads"] < 10
    return verdict


def main() -> None:
    args = parse(__doc__ or "", DEFAULTS, SMOKE)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, Any] = {}
    lines = [
        f"3 boxes, 6 models, 2 loaded per box, 2 slots per model (8: roomy), "
        f"{args.load_time:g} s loads; "
        f"{args.users} users x {args.per_user} conversations x {args.turns} turns; "
        f"seeds {args.seeds}; figures are the mean of the seeds",
    ]
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        rows = {
            system: mean_of([run(system, args, shape, seed) for seed in seeds])
            for system in SYSTEMS
        }
        verdicts = {name: goals(rows, name, shape_name) for name in SYSTEMS[2:]}
        results[shape_name] = {"what": shape.what, "rows": rows, "goals": verdicts}
        lines += [
            "",
            f"[{shape_name}] {shape.what}",
            f"{'':16} {'makespan':>9} {'lat p95':>8} {'ttft p95':>9} {'loads':>6}"
            f" {'reuse/ceil':>10} {'est err p50/p90':>16} {'failed':>6}",
        ]
        for system in SYSTEMS:
            r = rows[system]
            err = (
                f"{r['estimate_abs_error_p50_s']:.2f}/{r['estimate_abs_error_p90_s']:.2f}s"
                if r["estimate_abs_error_p50_s"] is not None
                else "-"
            )
            lines.append(
                f"{system:16} {r['makespan_s']:>8.1f}s {r['latency_p95_s']:>7.2f}s"
                f" {r['ttft_p95_s']:>8.2f}s {r['model_loads']:>6.1f}"
                f" {r['cache_reuse_of_ceiling']:>10.2f} {err:>16} {r['failed']:>6.1f}"
            )
        for name, v in verdicts.items():
            lines.append(
                f"  goals {name}: ttft p95 {v['ttft_p95_vs_best_baseline']:.2f} x best"
                f" (<=0.70 {v['ttft_p95_at_most_0.7']}), fewer loads"
                f" {v['fewer_loads_than_every_baseline']}, reuse>=0.8"
                f" {v['cache_reuse_at_least_0.8_of_ceiling']}, makespan"
                f" {v['makespan_vs_best_baseline']:.2f} x best ({v['makespan_no_worse']})"
                + (
                    f", single-digit loads {v['single_digit_loads']}"
                    if "single_digit_loads" in v
                    else ""
                )
            )
    report("routing quality", args, results, lines)


if __name__ == "__main__":
    main()
