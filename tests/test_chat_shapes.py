"""/v1/chat/completions validates messages at the edge: a malformed message, tool call or
content part is a 400 in OpenAI's shape naming the field — never a 500 — whichever box
would serve it, and a well-formed request relayed to a box that speaks OpenAI is not
translated at all. Property-based over message, tool and content-part shapes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollamux.backends.sim.llama_server import LlamaConfig
from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.api.openai import validate_chat
from ollamux.routing.errors import BadRequest
from tests.test_llama_server import GGUF, mixed

M = "llama3.2"

BAD: list[tuple[list[Any], str]] = [
    ([{"role": "assistant", "tool_calls": [{"id": "c1"}]}], "messages[0].tool_calls[0].function"),
    (
        [{"role": "tool", "tool_call_id": ["c1"], "content": "42"}],
        "messages[0].tool_call_id",
    ),
    ([{"role": 7, "content": "x"}], "messages[0].role"),
    (["hello"], "messages[0]"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0].image_url"),
    ([{"role": "user", "content": 12}], "messages[0].content"),
    (
        [{"role": "assistant", "tool_calls": [{"function": {"name": 3}}]}],
        "messages[0].tool_calls[0].function.name",
    ),
    ([{"role": "assistant", "tool_calls": {"a": 1}}], "messages[0].tool_calls"),
]


@pytest.mark.parametrize(("messages", "field"), BAD)
def test_malformed_messages_name_the_field(messages: list[Any], field: str) -> None:
    with pytest.raises(BadRequest) as err:
        validate_chat({"model": M, "messages": messages})
    assert field in err.value.message


@pytest_asyncio.fixture
async def fleet(cluster: Any) -> AsyncIterator[Any]:
    async with cluster(SimConfig(name="o", preloaded=[M])) as c:
        yield c


@pytest.mark.parametrize(("messages", "field"), BAD)
async def test_malformed_messages_are_400_not_500(
    fleet: Any, messages: list[Any], field: str
) -> None:
    resp = await fleet.http.post("/v1/chat/completions", json={"model": M, "messages": messages})
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["error"]["message"]
    assert await fleet.in_use() == 0


async def test_a_request_relayed_as_it_came_is_not_translated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A box that speaks OpenAI gets the client's bytes; the conversion to Ollama's shape
    is never run for it (it once ran on every request, and its crashes were 500s)."""
    import ollamux.backends.translate.plans as plans

    calls = 0
    original = plans._openai_converter

    def counting(path: str) -> Any:
        nonlocal calls
        calls += 1
        return original(path)

    monkeypatch.setattr(plans, "_openai_converter", counting)
    async with mixed(llama=(LlamaConfig(name="l", models=[GGUF]),)) as m:
        resp = await m.http.post(
            "/v1/chat/completions",
            json={"model": GGUF, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert resp.status_code == 200, resp.text
    assert calls == 0


texts = st.text(max_size=6)
junk = st.none() | st.booleans() | st.integers() | texts | st.lists(texts, max_size=2)
part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "other"]) | junk},
    optional={"text": texts | junk, "image_url": st.fixed_dictionaries({"url": texts}) | junk},
)
call = st.fixed_dictionaries(
    {},
    optional={
        "id": texts | junk,
        "type": st.just("function") | junk,
        "function": st.fixed_dictionaries(
            {}, optional={"name": texts | junk, "arguments": texts | junk}
        )
        | junk,
    },
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "developer"]) | junk},
    optional={
        "content": texts | st.none() | st.lists(part | junk, max_size=2) | junk,
        "tool_calls": st.lists(call | junk, max_size=2) | junk,
        "tool_call_id": texts | junk,
        "name": texts | junk,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(message | junk, min_size=1, max_size=3))
def test_any_message_shape_is_valid_or_a_400_and_valid_ones_convert(messages: list[Any]) -> None:
    from ollamux.backends.translate.openai_client import chat_request

    doc = {"model": M, "messages": messages}
    try:
        validate_chat(doc)
    except BadRequest:
        return
    with contextlib.suppress(BadRequest):
        chat_request(doc)  # what an Ollama box would get: converts, or a 400


async def test_the_property_holds_over_http(fleet: Any) -> None:
    """A sample of the shapes above, over HTTP: never a 5xx."""
    examples: list[list[Any]] = []

    @settings(max_examples=60, deadline=None, database=None)
    @given(messages=st.lists(message | junk, min_size=1, max_size=3))
    def collect(messages: list[Any]) -> None:
        examples.append(messages)

    await asyncio.to_thread(collect)
    codes = []
    for messages in examples:
        resp = await fleet.http.post(
            "/v1/chat/completions",
            json={"model": M, "messages": messages, "max_tokens": 1},
        )
        codes.append(resp.status_code)
        assert resp.status_code < 500, (messages, resp.text)
    assert await fleet.in_use() == 0
    print(f"\n{len(codes)} message shapes: {sorted(set(codes))}")
