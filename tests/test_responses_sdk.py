"""OpenAI's Responses API through ollamux, with the official `openai` SDK and LangChain,
on every kind of box: an Ollama box that serves /v1/responses (bytes through, the stream
byte-identical to the box's), an older Ollama box and a llama-server that do not
(translated, the llama-server learned from its 404 without being marked failed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import orjson
import pytest
from langchain_openai import ChatOpenAI

from ollamux.app import create_app
from ollamux.backends.sim.llama_server import LlamaConfig, SimLlama
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.breaker import BreakerState
from ollamux.routing.settings import parse_settings
from tests.conftest import Cluster, serve_app

MODEL = "qwen3:8b"
TOOL = {
    "type": "function",
    "name": "weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
NEW = SimConfig(name="new", models=[MODEL], version="0.13.3")
OLD = SimConfig(name="old", models=[MODEL])  # 0.12.6: no /v1/responses
LLAMA = LlamaConfig(name="llama", models=[MODEL])
BOXES = {"new": (NEW,), "old": (OLD,), "llama": (LLAMA,)}


@dataclass
class Fleet(Cluster):
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def sdk(self) -> openai.AsyncOpenAI:
        made = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)
        self.clients.append(made)
        return made


@asynccontextmanager
async def fleet(*configs: SimConfig | LlamaConfig, **extra: Any) -> AsyncIterator[Fleet]:
    """Simulated boxes of both kinds and ollamux in front; after the test, no slot held."""
    async with AsyncExitStack() as stack:
        boxes: list[Any] = []
        endpoints = []
        for config in configs:
            if isinstance(config, LlamaConfig):
                box: Any = await stack.enter_async_context(SimLlama(config))
                endpoints.append({"url": box.url, "name": config.name, "kind": "llama-server"})
            else:
                box = await stack.enter_async_context(SimBox(config))
                endpoints.append({"url": box.url, "name": config.name})
            boxes.append(box)
        probe = {"ps": 0.2, "tags": 30.0, "timeout": 2.0, "max_backoff": 0.5}
        app = create_app(parse_settings({"endpoints": endpoints, "probe": probe, **extra}))
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        cluster = Fleet(url, boxes, app, http)
        try:
            yield cluster
            await cluster.wait_for(no_slot_held(cluster))
        finally:
            for made in cluster.clients:
                await made.close()


def no_slot_held(c: Cluster) -> Any:
    async def check() -> bool:
        return not any(c.services.ledger.usage.values())

    return check


@pytest.mark.parametrize("kind", ["new", "old", "llama"])
async def test_create_answers_text(kind: str) -> None:
    async with fleet(*BOXES[kind]) as c:
        sdk = c.sdk()
        answer = await sdk.responses.create(
            model=MODEL, instructions="be brief", input="what is the sky"
        )
        assert answer.status == "completed"
        assert answer.output_text.strip()
        assert answer.output[-1].type == "message"
        assert answer.usage is not None and answer.usage.output_tokens > 0


@pytest.mark.parametrize("kind", ["old", "llama"])
async def test_an_answer_cut_at_max_output_tokens_is_incomplete(kind: str) -> None:
    async with fleet(*BOXES[kind]) as c:
        answer = await c.sdk().responses.create(
            model=MODEL, input="tell me a long story", max_output_tokens=3
        )
        assert answer.status == "incomplete"
        assert answer.incomplete_details is not None
        assert answer.incomplete_details.reason == "max_output_tokens"
        assert answer.usage is not None and answer.usage.output_tokens == 3


@pytest.mark.parametrize("kind", ["new", "old", "llama"])
async def test_create_calls_a_function_tool(kind: str) -> None:
    async with fleet(*BOXES[kind]) as c:
        sdk = c.sdk()
        answer = await sdk.responses.create(
            model=MODEL, input="what is the weather in Paris", tools=[TOOL]
        )
        calls = [item for item in answer.output if item.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "weather"
        assert isinstance(orjson.loads(calls[0].arguments), dict)
        assert calls[0].call_id
        # The tool's result goes back as items; the model answers in text.
        follow = await sdk.responses.create(
            model=MODEL,
            tools=[TOOL],
            input=[
                {"role": "user", "content": "what is the weather in Paris"},
                {
                    "type": "function_call",
                    "call_id": calls[0].call_id,
                    "name": "weather",
                    "arguments": calls[0].arguments,
                },
                {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
            ],
        )
        assert follow.output_text.strip()
        assert not [item for item in follow.output if item.type == "function_call"]


@pytest.mark.parametrize("kind", ["new", "old", "llama"])
async def test_stream_with_the_sdk(kind: str) -> None:
    async with fleet(*BOXES[kind]) as c:
        sdk = c.sdk()
        stream = await sdk.responses.create(model=MODEL, input="tell me a story", stream=True)
        events = [event async for event in stream]
        types = [e.type for e in events]
        assert types[:2] == ["response.created", "response.in_progress"]
        assert types[-1] == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        final = events[-1].response  # type: ignore[union-attr]
        assert deltas and final.output_text == deltas
        assert "response.output_text.done" in types and "response.output_item.done" in types

        stream = await sdk.responses.create(
            model=MODEL, input="what is the weather in Paris", tools=[TOOL], stream=True
        )
        events = [event async for event in stream]
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert len(done) == 1
        final = events[-1].response  # type: ignore[union-attr]
        calls = [item for item in final.output if item.type == "function_call"]
        assert calls[0].name == "weather" and calls[0].arguments == done[0].arguments


async def test_a_box_that_serves_responses_gets_the_bytes() -> None:
    async with fleet(NEW) as c:
        body = {"model": MODEL, "input": "tell me a story", "stream": True}
        async with c.http.stream("POST", "/v1/responses", json=body) as resp:
            relayed = b"".join([chunk async for chunk in resp.aiter_raw()])
        assert resp.headers["x-ollamux-endpoint"] == "new"
        assert relayed == c.box("new").responses.last_stream != b""


async def test_a_404_on_responses_is_learned_not_a_failure() -> None:
    async with fleet(LLAMA) as c:
        sdk = c.sdk()
        answer = await sdk.responses.create(model=MODEL, input="hello")
        assert answer.output_text.strip()
        box = c.services.prober.fleet.by_name["llama"]
        assert box.lacking == frozenset({"/v1/responses"})
        endpoint = (await c.status())["endpoints"][0]
        assert endpoint["lacking"] == ["/v1/responses"] and endpoint["health"] == "healthy"
        assert box.breaker is BreakerState.CLOSED and box.health == "healthy"
        assert (await sdk.responses.create(model=MODEL, input="again")).output_text.strip()


async def test_a_model_the_box_lost_is_not_mistaken_for_a_missing_route() -> None:
    router = LlamaConfig(name="llama", models=[MODEL, "other:1b"], router=True)
    async with fleet(router) as c:
        router.models.remove(MODEL)  # gone since the box listed it: its answer is a 404
        with pytest.raises(openai.NotFoundError) as caught:
            await c.sdk().responses.create(model=MODEL, input="hello")
        assert "not found" in caught.value.message
        # The translation got a 404 too: the model was missing, not the route.
        assert c.services.prober.fleet.by_name["llama"].lacking == frozenset()


@pytest.mark.parametrize("field", ["previous_response_id", "conversation"])
async def test_stored_state_is_a_clear_400(field: str) -> None:
    async with fleet(NEW) as c:
        with pytest.raises(openai.BadRequestError) as caught:
            await c.sdk().responses.create(
                model=MODEL, input="and then?", extra_body={field: "resp_123"}
            )
        error = caught.value.body
        assert isinstance(error, dict) and error["param"] == field
        assert field in error["message"] and "stateless" in error["message"]


async def test_reading_a_response_says_nothing_is_stored() -> None:
    async with fleet(NEW) as c:
        sdk = c.sdk()
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk.responses.retrieve("resp_123")
        assert "not stored" in str(caught.value)
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.delete("resp_123")


async def test_langchain_uses_the_responses_api() -> None:
    async with fleet(OLD) as c:
        chat = ChatOpenAI(
            model=MODEL,
            base_url=c.url + "/v1",
            api_key="unused",  # type: ignore[arg-type]
            use_responses_api=True,
            max_retries=0,
        )
        reply = await chat.ainvoke("what is the sky")
        assert reply.text.strip()
        called = await chat.bind_tools([TOOL]).ainvoke("what is the weather in Paris")
        assert called.tool_calls and called.tool_calls[0]["name"] == "weather"


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """The data of each server-sent event, with its ``event:`` name checked against it."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert lines["event"] == data["type"]
        out.append(data)
    return out


@pytest.mark.parametrize("kind", ["new", "old"])
async def test_a_stream_the_box_breaks_ends_with_an_error_event(kind: str) -> None:
    async with fleet(*BOXES[kind]) as c:
        c.box(kind).faults.kill_after_chunks = 3
        body = {"model": MODEL, "input": "tell me a story", "stream": True}
        async with c.http.stream("POST", "/v1/responses", json=body) as resp:
            raw = b"".join([chunk async for chunk in resp.aiter_raw()])
        events = events_of(raw)
        assert events[0]["type"] == "response.created"
        assert events[-1]["type"] == "error" and events[-1]["message"]
        assert "response.completed" not in [e["type"] for e in events]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))


@pytest.mark.parametrize("kind", ["new", "old", "llama"])
async def test_responses_are_counted_with_their_tokens(kind: str) -> None:
    async with fleet(*BOXES[kind]) as c:
        for stream in (False, True):
            body = {"model": MODEL, "input": "tell me a story", "stream": stream}
            async with c.http.stream("POST", "/v1/responses", json=body) as resp:
                assert resp.status_code == 200
                await resp.aread()
        # Both answers' usage (the stream's in response.completed) reached the totals.
        await c.wait_for(lambda: _requests(c, 2))
        totals = c.services.stats.lifetime()
        assert totals.output_tokens >= 2 * 8 and totals.prompt_tokens > 0
        assert (await c.status())["totals"]["requests"] == 2
        metrics = (await c.http.get("/metrics")).text
        assert 'route="/v1/responses"' in metrics
        assert f'ollamux_tokens_total{{box="{kind}",kind="output"' in metrics


async def _requests(c: Fleet, n: int) -> bool:
    return c.services.stats.lifetime().requests == n


@pytest.mark.parametrize("kind", ["new", "old", "llama"])
async def test_a_codex_like_request_for_an_aliased_gpt_model(kind: str) -> None:
    """What Codex sends: a gpt-* name (mapped by the config), store false, reasoning with
    a summary, include, a prompt cache key, function tools, streamed."""
    async with fleet(*BOXES[kind], aliases={"gpt-5-codex": MODEL}) as c:
        stream = await c.sdk().responses.create(
            model="gpt-5-codex",
            instructions="You are a coding agent.",
            input=[
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "list the files"}],
                }
            ],
            tools=[{**TOOL, "name": "shell", "strict": False}],
            tool_choice="auto",
            parallel_tool_calls=False,
            reasoning={"effort": "medium", "summary": "auto"},
            store=False,
            include=["reasoning.encrypted_content"],
            prompt_cache_key="session-1",
            stream=True,
        )
        events = [event async for event in stream]
        final = events[-1].response  # type: ignore[union-attr]
        assert events[-1].type == "response.completed"
        assert [item.name for item in final.output if item.type == "function_call"] == ["shell"]


async def test_what_an_older_box_cannot_do_is_a_400_naming_the_field() -> None:
    async with fleet(OLD, NEW) as c:
        sdk = c.sdk()
        # A box that serves the API takes what no translation could carry...
        answer = await sdk.responses.create(
            model=MODEL, input="what is the weather in Paris", tools=[TOOL], tool_choice="required"
        )
        assert answer.output[0].type == "function_call"
        assert c.box("new").stats.requests >= 1 and c.box("old").stats.requests == 0
    async with fleet(OLD) as c:
        # ...and where none does, the client is told which field, before any box is asked.
        with pytest.raises(openai.BadRequestError) as caught:
            await c.sdk().responses.create(
                model=MODEL, input="hi", tools=[TOOL], tool_choice="required"
            )
        body = caught.value.body
        assert isinstance(body, dict) and body["param"] == "tool_choice"
        assert c.box("old").stats.requests == 0


PATCH_TOOL = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/s"},
}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_custom_tool_like_codexs_apply_patch_on_a_translated_box(stream: bool) -> None:
    async with fleet(LLAMA) as c:
        sdk = c.sdk()
        asked: dict[str, Any] = {"model": MODEL, "input": "add a file", "tools": [PATCH_TOOL]}
        if stream:
            events = [e async for e in await sdk.responses.create(**asked, stream=True)]
            final = events[-1].response  # type: ignore[union-attr]
            assert "response.custom_tool_call_input.done" in [e.type for e in events]
        else:
            final = await sdk.responses.create(**asked)
        calls = [item for item in final.output if item.type == "custom_tool_call"]
        assert len(calls) == 1 and calls[0].name == "apply_patch"
        assert calls[0].input.strip() and not calls[0].input.startswith("{")


@pytest.mark.parametrize("kind", ["new", "old", "llama"])
async def test_reasoning_comes_back_as_a_summary(kind: str) -> None:
    async with fleet(*BOXES[kind]) as c:
        sdk = c.sdk()
        asked: dict[str, Any] = {"model": MODEL, "input": "why", "reasoning": {"effort": "low"}}
        answer = await sdk.responses.create(**asked)
        assert [item.type for item in answer.output] == ["reasoning", "message"]
        assert answer.output[0].summary[0].text.strip()  # type: ignore[union-attr]
        events = [e async for e in await sdk.responses.create(**asked, stream=True)]
        thought = "".join(
            e.delta for e in events if e.type == "response.reasoning_summary_text.delta"
        )
        final = events[-1].response  # type: ignore[union-attr]
        assert thought and final.output[0].summary[0].text == thought
        assert final.output[1].type == "message" and final.output_text
