"""Fair share: an interactive user's wait behind another user's batch flood.

One simulated box (its own process, 2 slots) behind ollamux (its own process). A batch
user keeps ``batch_clients`` long requests going at all times (a closed loop); an
interactive user sends a short streamed chat every ``interval`` seconds. The same run is
made with ``fairness.enabled`` on and off; reported: the interactive user's time to first
token (p50, p95) and the duration of one batch request, the wait a fair scheduler should
stay under (a slot frees within one batch request's service time, its first token to its
last).

    python bench/fair_share.py            # about a minute
    python bench/fair_share.py --smoke    # seconds; figures mean nothing
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import orjson
from _harness import Stack, parse, report

DEFAULTS: dict[str, Any] = {
    "seconds": 20.0,
    "batch_clients": 12,
    "batch_tokens": 60,
    "chat_tokens": 8,
    "interval": 0.5,
    "tokens_per_s": 50.0,
}
SMOKE: dict[str, Any] = {"seconds": 1.5, "batch_clients": 4, "batch_tokens": 5, "interval": 0.2}


async def stream(
    session: aiohttp.ClientSession, url: str, user: str, tokens: int
) -> tuple[float, float]:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": f"{user} {time.monotonic()}"}],
        "options": {"num_predict": tokens},
    }
    started = time.monotonic()
    first = None
    async with session.post(
        url + "/api/chat", data=orjson.dumps(body), headers={"X-User-Id": user}
    ) as resp:
        resp.raise_for_status()
        async for _ in resp.content.iter_any():
            if first is None:
                first = time.monotonic() - started
    return (first if first is not None else 0.0), time.monotonic() - started


async def drive(url: str, args: Any) -> dict[str, Any]:
    stop = time.monotonic() + args.seconds
    batch: list[float] = []
    ttft: list[float] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def batch_client() -> None:
            while time.monotonic() < stop:
                first, total = await stream(session, url, "batch", args.batch_tokens)
                batch.append(total - first)  # its service time, once a slot took it

        async def chat_client() -> None:
            await asyncio.sleep(args.interval)  # let the flood build first
            pending = []
            while time.monotonic() < stop:
                pending.append(asyncio.create_task(stream(session, url, "chat", args.chat_tokens)))
                await asyncio.sleep(args.interval)
            ttft.extend(first for first, _ in await asyncio.gather(*pending))

        await asyncio.gather(chat_client(), *(batch_client() for _ in range(args.batch_clients)))
    ttft.sort()
    return {
        "chat_requests": len(ttft),
        "chat_ttft_p50_s": round(statistics.median(ttft), 3),
        "chat_ttft_p95_s": round(ttft[max(0, round(0.95 * len(ttft)) - 1)], 3),
        "batch_requests": len(batch),
        "batch_service_p50_s": round(statistics.median(batch), 3),
    }


def run(args: Any, fair: bool) -> dict[str, Any]:
    with Stack() as stack:
        box = stack.box(num_parallel=2, tokens_per_s=args.tokens_per_s)
        fairness = {"enabled": fair, "max_waiting_share": 1.0}
        ox = stack.ollamux([box], server=args.server, slots=2, fairness=fairness)
        return asyncio.run(drive(ox.url, args))


def main() -> None:
    args = parse(__doc__ or "", DEFAULTS, SMOKE)
    results = {"fair share on": run(args, True), "fair share off": run(args, False)}
    on = results["fair share on"]
    results["goal"] = {
        "chat_ttft_p95_below_one_batch_request": on["chat_ttft_p95_s"] < on["batch_service_p50_s"]
    }
    lines = [
        f"{args.batch_clients} batch clients ({args.batch_tokens} tokens each) and one chat client "
        f"(every {args.interval} s, {args.chat_tokens} tokens) on one box with 2 slots",
        f"{'':16} {'chat ttft p50':>14} {'chat ttft p95':>14} {'batch request':>14}",
    ]
    for name in ("fair share on", "fair share off"):
        r = results[name]
        lines.append(
            f"{name:16} {r['chat_ttft_p50_s']:>13.2f}s {r['chat_ttft_p95_s']:>13.2f}s"
            f" {r['batch_service_p50_s']:>13.2f}s"
        )
    lines.append(f"goal (on: chat p95 < one batch request): {results['goal']}")
    report("fair share", args, results, lines)


if __name__ == "__main__":
    main()
