"""The load generator: its own process, uvloop + httptools, raw HTTP/1.1 keep-alive.

Run by the bench scripts (never by CI directly: the leading underscore), one mode per
call, each printing one JSON object on stdout. It alternates between the URLs it is given
(ollamux and the box itself) so both are measured under the same conditions, and it is
cheap enough per request (a C parser, no client library) that the box measured directly
is what limits it, not the generator.

    python bench/_load.py serial   --url A --url B --requests 2000
    python bench/_load.py capacity --url A --url B --concurrency 64 --seconds 3 --rounds 4
    python bench/_load.py stream   --url A --url B --tokens 20000 --rounds 4
    python bench/_load.py hold     --url A --streams 1000 --seconds 20
    python bench/_load.py spread   --url A --url B --url C --concurrency 64 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

MODEL = "llama3.2"


def chat_body(*, stream: bool, tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "say something short"}],
            "stream": stream,
            "options": {"num_predict": tokens},
        }
    )


def openai_chat_body(*, tokens: int) -> bytes:
    """The same request as ``chat_body(stream=True)``, in OpenAI's shape."""
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "say something short"}],
            "stream": True,
            "max_tokens": tokens,
        }
    )


def raw_request(url: str, path: str, body: bytes) -> bytes:
    netloc = urlsplit(url).netloc
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Reply:
    status: int = 0
    headers_at: float = 0.0
    ended_at: float = 0.0
    lines: int = 0
    size: int = 0


class Conn(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` sends a request and awaits the full reply."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reply = Reply()
        self.waiter: asyncio.Future[Reply] | None = None
        self.headers_seen: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, url: str) -> Conn:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, parts.hostname or "", parts.port or 80)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def on_headers_complete(self) -> None:
        self.reply.status = self.parser.get_status_code()
        self.reply.headers_at = time.perf_counter()
        if self.headers_seen is not None and not self.headers_seen.done():
            self.headers_seen.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.reply.lines += body.count(b"\n")
        self.reply.size += len(body)

    def on_message_complete(self) -> None:
        self.reply.ended_at = time.perf_counter()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.reply)

    def send(self, raw: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.reply = Reply()
        self.waiter = loop.create_future()
        self.headers_seen = loop.create_future()
        self.transport.write(raw)
        return self.waiter

    async def exchange(self, raw: bytes) -> Reply:
        reply = await self.send(raw)
        if reply.status != 200:
            raise RuntimeError(f"answered {reply.status}")
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))], 4)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "mean": round(sum(ordered) / n, 4)}


# -- modes --------------------------------------------------------------------------------


async def serial(urls: list[str], requests: int, warmup: int) -> dict[str, Any]:
    """One client, one request at a time, alternating between the URLs request by request."""
    body = chat_body(stream=False, tokens=8)
    conns = [await Conn.open(u) for u in urls]
    raws = [raw_request(u, "/api/chat", body) for u in urls]
    samples: list[list[float]] = [[] for _ in urls]
    for i in range(warmup + requests):
        for k in range(len(urls)) if i % 2 == 0 else reversed(range(len(urls))):
            t0 = time.perf_counter()
            await conns[k].exchange(raws[k])
            if i >= warmup:
                samples[k].append((time.perf_counter() - t0) * 1000)
    for c in conns:
        c.close()
    return {"latency_ms": [percentiles(s) for s in samples]}


async def _hammer(
    url: str | list[str], concurrency: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """``concurrency`` clients in a closed loop; given several URLs, client i uses the
    i-th one round-robin (replicas behind a load balancer)."""
    urls = [url] if isinstance(url, str) else url
    body = chat_body(stream=False, tokens=8)
    targets = [urls[i % len(urls)] for i in range(concurrency)]
    conns = await asyncio.gather(*(Conn.open(u) for u in targets))
    raws = [raw_request(u, "/api/chat", body) for u in targets]
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    counts = [0] * concurrency
    total = [0] * concurrency  # warm-up included: the servers' CPU time covers it too
    latencies: list[float] = []
    errors = 0

    async def worker(i: int) -> None:
        nonlocal errors
        conn, raw = conns[i], raws[i]
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            reply = await conn.send(raw)
            total[i] += 1
            if reply.status != 200:
                errors += 1
            if t0 >= measure_from:
                counts[i] += 1
                latencies.append((reply.ended_at - t0) * 1000)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - measure_from
    for c in conns:
        c.close()
    done = sum(counts)
    return {
        "requests_per_s": round(done / elapsed, 1),
        "requests": done,
        "requests_total": sum(total),
        "errors": errors,
        "latency_ms": percentiles(latencies) if latencies else {},
    }


async def capacity(
    urls: list[str], concurrency: int, warmup: float, seconds: float, rounds: int
) -> dict[str, Any]:
    """``concurrency`` clients in a closed loop, one URL at a time, URLs alternating by round."""
    runs: list[list[dict[str, Any]]] = [[] for _ in urls]
    for r in range(rounds):
        order = range(len(urls)) if r % 2 == 0 else reversed(range(len(urls)))
        for k in order:
            runs[k].append(await _hammer(urls[k], concurrency, warmup, seconds))
            await asyncio.sleep(0.2)  # let both servers settle between runs
    return {
        "runs": runs,
        "requests_per_s": [statistics.median(x["requests_per_s"] for x in rs) for rs in runs],
    }


async def spread(
    urls: list[str], concurrency: int, warmup: float, seconds: float, rounds: int
) -> dict[str, Any]:
    """``concurrency`` clients spread over all URLs at once (several replicas of one
    fleet), ``rounds`` times; the median of the rounds."""
    runs = []
    for _ in range(rounds):
        runs.append(await _hammer(urls, concurrency, warmup, seconds))
        await asyncio.sleep(0.2)
    return {
        "runs": [runs],
        "requests_per_s": [statistics.median(r["requests_per_s"] for r in runs)],
    }


async def stream(urls: list[str], tokens: int, rounds: int, v1_first: bool) -> dict[str, Any]:
    """One long stream at a time; chunks/s counts NDJSON lines (or server-sent events) as
    the client receives them. ``v1_first``: the first URL is asked at OpenAI's
    /v1/chat/completions (its events counted), the others at Ollama's /api/chat."""
    requests = [raw_request(u, "/api/chat", chat_body(stream=True, tokens=tokens)) for u in urls]
    if v1_first:
        requests[0] = raw_request(urls[0], "/v1/chat/completions", openai_chat_body(tokens=tokens))
    runs: list[list[dict[str, float]]] = [[] for _ in urls]
    for r in range(rounds + 1):  # round 0 warms up
        order = range(len(urls)) if r % 2 == 0 else reversed(range(len(urls)))
        for k in order:
            conn = await Conn.open(urls[k])
            reply = await conn.exchange(requests[k])
            conn.close()
            seconds = reply.ended_at - reply.headers_at
            chunks = reply.lines // 2 if v1_first and k == 0 else reply.lines  # "data: ..\n\n"
            if r > 0:
                runs[k].append(
                    {
                        "chunks": chunks,
                        "seconds": round(seconds, 4),
                        "chunks_per_s": round(chunks / seconds, 1),
                        "mb_per_s": round(reply.size / seconds / 1e6, 2),
                    }
                )
    return {
        "runs": runs,
        "chunks_per_s": [statistics.median(x["chunks_per_s"] for x in rs) for rs in runs],
    }


async def hold(url: str, streams: int, tokens: int, seconds: float) -> dict[str, Any]:
    """Open ``streams`` streaming requests, say "ready" once all have their headers, hold
    them until stdin closes (or ``seconds`` pass), then hang up on all of them."""
    raw = raw_request(url, "/api/chat", chat_body(stream=True, tokens=tokens))
    conns: list[Conn] = []
    for start in range(0, streams, 100):  # in batches: a listen backlog is finite
        batch = await asyncio.gather(
            *(Conn.open(url) for _ in range(start, min(streams, start + 100)))
        )
        for c in batch:
            c.send(raw)
        conns.extend(batch)
    t0 = time.perf_counter()
    await asyncio.gather(*(c.headers_seen for c in conns if c.headers_seen is not None))
    statuses = sorted({c.reply.status for c in conns})
    print(orjson.dumps({"ready": len(conns), "statuses": statuses}).decode(), flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    await asyncio.wait([stdin_closed], timeout=seconds)
    lines = sum(c.reply.lines for c in conns)
    ended = sum(1 for c in conns if c.waiter is not None and c.waiter.done())
    for c in conns:
        if c.waiter is not None and not c.waiter.done():
            c.waiter.cancel()  # nobody awaits it: hanging up is the point
        c.close()
    return {
        "streams": len(conns),
        "statuses": statuses,
        "all_headers_s": round(time.perf_counter() - t0, 3),
        "chunks_received": lines,
        "ended_early": ended,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["serial", "capacity", "stream", "hold", "spread"])
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--v1-first", action="store_true", help="stream: first URL via /v1")
    args = parser.parse_args()
    if args.mode == "serial":
        coro = serial(args.url, args.requests, int(args.warmup))
    elif args.mode == "capacity":
        coro = capacity(args.url, args.concurrency, args.warmup, args.seconds, args.rounds)
    elif args.mode == "spread":
        coro = spread(args.url, args.concurrency, args.warmup, args.seconds, args.rounds)
    elif args.mode == "stream":
        coro = stream(args.url, args.tokens, args.rounds, args.v1_first)
    else:
        coro = hold(args.url[0], args.streams, args.tokens, args.seconds)
    result = uvloop.run(coro)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
