"""The official ``openai`` SDK through ollamux to real llama-servers: chat (whole and
streamed), completions, and the merged model list."""

from __future__ import annotations

import pytest
from openai import APIStatusError, AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.realbox.conftest import ONE, ONLY_ROUTER, SIM_MODEL, Fleet

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "tell me a story"}]


def client(fleet: Fleet) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0)


async def test_models_lists_every_box(fleet: Fleet) -> None:
    async with client(fleet) as openai:
        ids = {m.id async for m in openai.models.list()}
        assert {ONE, ONLY_ROUTER, SIM_MODEL} <= ids
        one = await openai.models.retrieve(ONE)
        assert one.id == ONE


async def test_chat_not_streamed(fleet: Fleet) -> None:
    async with client(fleet) as openai:
        raw = await openai.chat.completions.with_raw_response.create(
            model=ONE, messages=MESSAGES, max_tokens=7
        )
        assert raw.headers["x-ollamux-endpoint"] == "llama-one"
        reply = raw.parse()
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    # The tiny model never picks an end token: every request runs to its limit.
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 0


async def test_chat_streamed(fleet: Fleet) -> None:
    async with client(fleet) as openai:
        stream = await openai.chat.completions.create(
            model=ONE,
            messages=MESSAGES,
            max_tokens=9,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text and reasons[-1] == "length" and not any(reasons[:-1])
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    usage = next(c.usage for c in reversed(chunks) if c.usage is not None)
    assert usage.completion_tokens == 9


async def test_completions_on_a_router_model(fleet: Fleet) -> None:
    """A router-mode model that was not loaded is loaded by the request (llama-server's
    autoload) and answers."""
    async with client(fleet) as openai:
        raw = await openai.completions.with_raw_response.create(
            model=ONLY_ROUTER, prompt="once upon a time", max_tokens=5
        )
        assert raw.headers["x-ollamux-endpoint"] == "llama-router"
        reply = raw.parse()
        assert reply.choices[0].text and reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 5

        stream = await openai.completions.create(
            model=ONLY_ROUTER, prompt="once upon a time", max_tokens=6, stream=True
        )
        pieces = [c async for c in stream]
    assert "".join(c.choices[0].text for c in pieces if c.choices)
    assert [c.choices[0].finish_reason for c in pieces if c.choices][-1] == "length"


async def test_a_simulated_ollama_model_through_the_same_client(fleet: Fleet) -> None:
    async with client(fleet) as openai:
        raw = await openai.chat.completions.with_raw_response.create(
            model=SIM_MODEL, messages=MESSAGES
        )
        assert raw.headers["x-ollamux-endpoint"] == "ollama-sim"
        assert raw.parse().choices[0].message.content


async def test_a_llama_server_error_reaches_the_sdk_as_is(fleet: Fleet) -> None:
    """llama-server's own error (embeddings from a server started without
    ``--embeddings``), its status and OpenAI-shaped body, reach the SDK unchanged."""
    async with client(fleet) as openai:
        with pytest.raises(APIStatusError) as raised:
            await openai.embeddings.create(model=ONE, input="a")
    error = raised.value
    assert error.status_code == 501 and "--embeddings" in error.message
    assert isinstance(error.body, dict) and error.body["type"] == "not_supported_error"
