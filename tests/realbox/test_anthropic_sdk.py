"""The official ``anthropic`` SDK through ollamux to a real llama-server, which serves
``/v1/messages`` and ``/v1/messages/count_tokens`` itself (bytes through), and to a
simulated Ollama box of an older version, which does not (translated)."""

from __future__ import annotations

import asyncio

import anthropic
import httpx

from tests.realbox.conftest import ONE, SIM_MODEL, Fleet

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
