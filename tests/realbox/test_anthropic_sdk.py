"""The official ``anthropic`` SDK through ollamux to a real llama-server, which serves
``/v1/messages`` and ``/v1/messages/count_tokens`` itself (bytes through), to the same
server configured as a generic ``openai`` box (translated to chat completions: the real
tokenizer and chat template count the prompt alike both ways), and to a simulated Ollama
box of an older version (translated to /api/chat)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anthropic
import httpx

from ollamux.app import create_app
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app
from tests.realbox.conftest import ONE, SIM_MODEL, Fleet, LlamaServer

ASK = [{"role": "user", "content": "tell me a story"}]


def client(fleet: Fleet) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fleet.url, api_key="unused", max_retries=0)


async def _idle(fleet: Fleet) -> None:
    async def idle() -> bool:
        status = await fleet.status()
        return not any(m["in_use"] for ep in status["endpoints"] for m in ep["models"])

    await fleet.wait_for(idle)


async def test_messages_whole_and_streamed_bytes_through(fleet: Fleet) -> None:
    async with client(fleet) as claude:
        raw = await claude.messages.with_raw_response.create(
            model=ONE,
            max_tokens=6,
            messages=ASK,  # type: ignore[list-item]
        )
        assert raw.headers["x-ollamux-endpoint"] == "llama-one"
        message = await raw.parse()
        assert message.content[0].type == "text" and message.content[0].text
        # The tiny model never picks an end token: every request runs to its limit.
        assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 6
        async with claude.messages.stream(
            model=ONE,
            max_tokens=5,
            messages=ASK,  # type: ignore[list-item]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text and final.usage.output_tokens == 5
    # The box's own event stream, relayed unchanged (ids are the box's).
    body = {"model": ONE, "max_tokens": 3, "messages": ASK, "stream": True}
    resp = await fleet.http.post("/v1/messages", json=body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.startswith("event: message_start\n")
    assert "event: message_stop" in resp.text
    await _idle(fleet)


async def test_count_tokens_by_the_box_itself(fleet: Fleet) -> None:
    async with client(fleet) as claude:
        short = await claude.messages.count_tokens(model=ONE, messages=ASK)  # type: ignore[arg-type]
        longer = await claude.messages.count_tokens(
            model=ONE,
            system="you are a storyteller who speaks in rhymes",
            messages=ASK,  # type: ignore[arg-type]
        )
    async with httpx.AsyncClient(trust_env=False) as direct:
        box = (await fleet.endpoint("llama-one"))["url"]
        own = await direct.post(
            f"{box}/v1/messages/count_tokens", json={"model": ONE, "messages": ASK}
        )
    assert short.input_tokens == own.json()["input_tokens"] > 0
    assert longer.input_tokens > short.input_tokens
    await _idle(fleet)


async def test_a_box_without_messages_is_translated(fleet: Fleet) -> None:
    async with client(fleet) as claude:
        message = await claude.messages.create(
            model=SIM_MODEL,
            max_tokens=20,
            messages=ASK,  # type: ignore[list-item]
        )
        assert message.content[0].type == "text" and message.content[0].text
        async with claude.messages.stream(
            model=SIM_MODEL,
            max_tokens=20,
            messages=ASK,  # type: ignore[list-item]
        ) as stream:
            final = await stream.get_final_message()
        assert final.content[0].text == message.content[0].text  # type: ignore[union-attr]
    await asyncio.sleep(0)
    await _idle(fleet)


@asynccontextmanager
async def one_box(server: LlamaServer, kind: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """ollamux in front of ``server`` alone, configured as a box of ``kind``."""
    endpoints = [{"url": server.url, "name": kind, "kind": kind}]
    probe = {"ps": 0.1, "tags": 0.5, "timeout": 2.0, "max_backoff": 0.3}
    app = create_app(parse_settings({"endpoints": endpoints, "probe": probe}))
    async with serve_app(app) as url:
        svc = app.state.services
        for _ in range(200):
            if all(b.routable and b.models for b in svc.prober.fleet.boxes):
                break
            await asyncio.sleep(0.05)
        async with anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as claude:
            yield claude
        for _ in range(100):
            if not svc.ledger.usage:
                break
            await asyncio.sleep(0.02)
        assert not svc.ledger.usage


async def test_translated_to_a_real_llama_servers_chat_completions(llama_one: LlamaServer) -> None:
    """The same server as an ``openai`` box: ollamux translates to chat completions. Its
    own count of the prompt (bytes through to /v1/messages/count_tokens) and the
    translated count (the usage of a one-token chat completion) agree: the same
    tokenizer and chat template saw the same conversation."""
    system = "you are a storyteller"
    counts = []
    for kind in ("llama-server", "openai"):
        async with one_box(llama_one, kind) as claude:
            counted = await claude.messages.count_tokens(
                model=ONE,
                system=system,
                messages=ASK,  # type: ignore[arg-type]
            )
            counts.append(counted.input_tokens)
            message = await claude.messages.create(
                model=ONE,
                system=system,
                max_tokens=4,
                messages=ASK,  # type: ignore[list-item]
            )
            assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 4
            assert message.content[0].text  # type: ignore[union-attr]
            async with claude.messages.stream(
                model=ONE,
                max_tokens=4,
                messages=ASK,  # type: ignore[list-item]
            ) as stream:
                final = await stream.get_final_message()
            assert final.content[0].text and final.usage.output_tokens == 4  # type: ignore[union-attr]
    assert counts[0] == counts[1] > 0, counts
