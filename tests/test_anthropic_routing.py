"""/v1/messages is routed like every inference route: conversation affinity, failover to
another box when one fails, X-Priority, the slot limit, ollamux's own refusals (a body
too large, no box able to serve) in Anthropic's shape; thinking and images on both
paths. The official `anthropic` SDK over real sockets; no slot left in use after."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import pytest

from ollamux.backends.sim.ollama import SimConfig
from tests.conftest import Cluster, run_cluster

NEW = "qwen3-coder:30b"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 8).decode()


@asynccontextmanager
async def boxes(*configs: SimConfig, **extra: Any) -> AsyncIterator[tuple[Cluster, Any]]:
    async with run_cluster(*configs, **extra) as c:
        svc = c.services
        for _ in range(300):
            if all(b.routable and b.models for b in svc.prober.fleet.boxes):
                break
            await asyncio.sleep(0.02)
        client = anthropic.AsyncAnthropic(base_url=c.url, api_key="k", max_retries=0)
        try:
            yield c, client
        finally:
            await client.close()
            for _ in range(200):
                if not svc.ledger.usage:
                    break
                await asyncio.sleep(0.01)
            assert not svc.ledger.usage


def turn(first: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": first}]


@pytest.mark.parametrize("version", ["0.12.6", "0.14.0"])
async def test_a_conversation_stays_on_its_box(version: str) -> None:
    """Every box has the model loaded and free, so only affinity keeps a conversation's
    turns (same first user message) on one box."""
    configs = [
        SimConfig(name=n, models=[NEW], version=version, preloaded=[NEW]) for n in ("a", "b", "c")
    ]
    async with boxes(*configs) as (_c, client):
        for first in ("write a parser", "fix the tests", "explain the diff", "lint", "ship"):
            seen = set()
            history = turn(first)
            for _ in range(4):
                raw = await client.messages.with_raw_response.create(
                    model=NEW, max_tokens=8, messages=history
                )
                seen.add(raw.headers["x-ollamux-endpoint"])
                answer = await raw.parse()
                history = [
                    *history,
                    {"role": "assistant", "content": answer.content[0].text},  # type: ignore[union-attr]
                    {"role": "user", "content": "go on"},
                ]
            assert len(seen) == 1, seen


@pytest.mark.parametrize("version", ["0.12.6", "0.14.0"])
async def test_a_failing_box_is_failed_over(version: str) -> None:
    configs = [SimConfig(name=n, models=[NEW], version=version) for n in ("a", "b")]
    async with boxes(*configs, priority_routing=True) as (c, client):
        c.box("a").faults.error_status = 500
        raw = await client.messages.with_raw_response.create(
            model=NEW, max_tokens=8, messages=turn("hi")
        )
        assert raw.headers["x-ollamux-endpoint"] == "b"
        assert (await raw.parse()).content[0].text  # type: ignore[union-attr]


async def test_no_box_able_to_serve_is_overloaded_with_retry_after() -> None:
    async with boxes(SimConfig(name="a", models=[NEW], version="0.14.0")) as (c, client):
        await c.box("a").stop()
        c.services.prober.poke("a")
        for _ in range(300):
            if not c.services.prober.fleet.by_name["a"].routable:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(anthropic.APIStatusError) as err:
            await client.messages.create(model=NEW, max_tokens=8, messages=turn("hi"))
        assert err.value.status_code == 503
        assert err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        assert err.value.response.headers["retry-after"]


async def test_ollamux_refusals_take_anthropics_shape() -> None:
    limits = {"max_body_bytes": 2048}
    async with boxes(SimConfig(name="a", models=[NEW]), limits=limits) as (c, client):
        with pytest.raises(anthropic.APIStatusError) as err:
            await client.messages.create(model=NEW, max_tokens=8, messages=turn("x" * 4096))
        assert err.value.status_code == 413
        assert err.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(
                model=NEW, max_tokens=8, messages=turn("hi"), extra_headers={"x-priority": "now"}
            )
        assert "X-Priority" in bad.value.message
        wrong = await c.http.get("/v1/messages")
        assert wrong.status_code == 405
        assert wrong.json()["error"]["type"] == "invalid_request_error"


async def test_priority_and_the_slot_limit_hold() -> None:
    """With one slot and slow decoding, a high-priority ask waiting with normal ones is
    served first, and the box never runs more than its slot at once."""
    config = SimConfig(name="a", models=[NEW], num_parallel=1, tokens_per_s=200)
    async with boxes(config, max_concurrent_connections=1) as (c, client):
        order: list[str] = []
        room = c.services.dispatcher.room

        async def ask(tag: str, priority: str, tokens: int = 10) -> None:
            await client.messages.create(
                model=NEW,
                max_tokens=tokens,
                messages=turn(tag),
                extra_headers={"x-priority": priority},
            )
            order.append(tag)

        # The first holds the only slot while the others queue (2 s of decoding).
        first = asyncio.create_task(ask("first", "normal", tokens=400))
        await c.wait_for(lambda: _busy(c))
        rest = [asyncio.create_task(ask(f"n{i}", "normal")) for i in range(3)]
        await c.wait_for(lambda: _waiting(room, 3))
        rest.append(asyncio.create_task(ask("urgent", "high")))
        await c.wait_for(lambda: _waiting(room, 4))
        assert not first.done()
        await asyncio.gather(first, *rest)
        assert order[:2] == ["first", "urgent"]
        assert c.box("a").stats.max_active_per_model[NEW] == 1


async def _waiting(room: Any, n: int) -> bool:
    return bool(room.size == n)


async def _busy(c: Cluster) -> bool:
    return bool(c.services.ledger.usage)


@pytest.mark.parametrize("version", ["0.12.6", "0.14.0"])
async def test_thinking_and_images(version: str) -> None:
    async with boxes(SimConfig(name="a", models=[NEW], version=version)) as (_c, client):
        message = await client.messages.create(
            model=NEW,
            max_tokens=16,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is in this picture"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                }
            ],
        )
        kinds = [b.type for b in message.content]
        assert kinds == ["thinking", "text"]
        assert message.content[0].thinking  # type: ignore[union-attr]
        async with client.messages.stream(
            model=NEW,
            max_tokens=16,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=turn("think first"),
        ) as stream:
            final = await stream.get_final_message()
        assert [b.type for b in final.content] == ["thinking", "text"]
