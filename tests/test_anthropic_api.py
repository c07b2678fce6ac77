"""Anthropic's Messages API through ollamux, with the official `anthropic` SDK over real
sockets: boxes that serve /v1/messages themselves (an Ollama 0.14, a llama-server) get
the client's bytes and their streams come back byte for byte; boxes that do not (an
older Ollama, a llama-server build without the route, a generic OpenAI box) get a
translation. Tools, count_tokens, unknown models, keys, a box's 404 on the route, a
stream cut mid-way, and no slot left in use after any of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from starlette.applications import Starlette

from ollamux.app import create_app
from ollamux.backends.sim.llama_server import LlamaConfig, SimLlama
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.api.services import Services
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app

OLD = "qwen3:8b"  # on an Ollama 0.12.6: no /v1/messages
NEW = "qwen3-coder:30b"  # on an Ollama 0.14.0: /v1/messages
GGUF = "org/Qwen3-Coder-GGUF:Q4_K_M"  # on a llama-server that serves /v1/messages
PLAIN = "org/Gemma-GGUF:Q4_K_M"  # on a llama-server build without it
GENERIC = "org/Mistral-GGUF:Q8_0"  # on a generic OpenAI-compatible box
WEATHER = {
    "name": "get_weather",
    "description": "the weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ASK = [{"role": "user", "content": "what is the weather in Paris"}]
# model -> (box name, path the box gets, whether ollamux translates)
ROUTES = {
    OLD: ("old", "/api/chat", True),
    NEW: ("new", "/v1/messages", False),
    GGUF: ("llama", "/v1/messages", False),
    PLAIN: ("plain", "/v1/chat/completions", True),
    GENERIC: ("generic", "/v1/chat/completions", True),
}
TRANSLATED = [m for m, (_, _, t) in ROUTES.items() if t]
NATIVE = [m for m, (_, _, t) in ROUTES.items() if not t]


@dataclass
class Fleet:
    url: str
    app: Starlette
    http: httpx.AsyncClient
    ollama: dict[str, SimBox]
    llama: dict[str, SimLlama]
    clients: list[anthropic.AsyncAnthropic] = field(default_factory=list)

    @property
    def services(self) -> Services:
        svc: Services = self.app.state.services
        return svc

    def client(self, **kw: Any) -> anthropic.AsyncAnthropic:
        if "auth_token" not in kw:
            kw.setdefault("api_key", "unused")
        client = anthropic.AsyncAnthropic(base_url=self.url, max_retries=0, **kw)
        self.clients.append(client)  # closed when the fleet goes
        return client

    def box_url(self, model: str) -> str:
        name = ROUTES[model][0]
        box = self.ollama.get(name) or self.llama[name]
        return box.url


@asynccontextmanager
async def fleet(**extra: Any) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        ollama = {
            "old": SimBox(SimConfig(name="old", models=[OLD])),
            "new": SimBox(SimConfig(name="new", models=[NEW], version="0.14.0")),
        }
        llama = {
            "llama": SimLlama(LlamaConfig(name="llama", models=[GGUF])),
            "plain": SimLlama(LlamaConfig(name="plain", models=[PLAIN], messages=False)),
            "generic": SimLlama(LlamaConfig(name="generic", models=[GENERIC])),
        }
        for box in [*ollama.values(), *llama.values()]:
            await stack.enter_async_context(box)  # type: ignore[arg-type]
        kinds = {"llama": "llama-server", "plain": "llama-server", "generic": "openai"}
        endpoints: list[dict[str, Any]] = [{"url": b.url, "name": n} for n, b in ollama.items()]
        endpoints += [{"url": b.url, "name": n, "kind": kinds[n]} for n, b in llama.items()]
        probe = {"ps": 0.1, "tags": 30.0, "timeout": 2.0, "max_backoff": 0.2}
        app = create_app(parse_settings({"endpoints": endpoints, "probe": probe, **extra}))
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=url, timeout=10, trust_env=False)
        )
        f = Fleet(url, app, http, ollama, llama)
        await _settled(f)
        try:
            yield f
        finally:
            for client in f.clients:
                await client.close()
        # After every test: no slot left in use.
        for _ in range(200):
            if not f.services.ledger.usage:
                break
            await asyncio.sleep(0.01)
        assert not f.services.ledger.usage, f.services.ledger.usage


async def _settled(f: Fleet) -> None:
    for _ in range(300):
        boxes = f.services.prober.fleet.boxes
        if len(boxes) == 5 and all(b.routable and b.models for b in boxes):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the boxes were not probed in time")


def _paths(f: Fleet, model: str) -> list[str]:
    name = ROUTES[model][0]
    if name in f.llama:
        return [path for path, _ in f.llama[name].received]
    return []


# -- text, whole and streamed ---------------------------------------------------------


@pytest.mark.parametrize("model", list(ROUTES))
async def test_messages_create_on_every_kind_of_box(model: str) -> None:
    async with fleet() as f:
        message = await f.client().messages.create(
            model=model, max_tokens=200, system="be brief", messages=ASK
        )
        assert message.type == "message" and message.role == "assistant"
        assert message.content[0].type == "text" and message.content[0].text.strip()
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
        name, path, _ = ROUTES[model]
        if name in f.llama:
            assert _paths(f, model)[-1] == path


@pytest.mark.parametrize("model", list(ROUTES))
async def test_messages_stream_on_every_kind_of_box(model: str) -> None:
    async with fleet() as f:
        client = f.client()
        whole = await client.messages.create(model=model, max_tokens=200, messages=ASK)
        async with client.messages.stream(model=model, max_tokens=200, messages=ASK) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text and text == whole.content[0].text  # type: ignore[union-attr]
        assert final.content[0].text == text  # type: ignore[union-attr]
        assert final.stop_reason == whole.stop_reason
        assert final.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.parametrize("model", NATIVE)
async def test_a_box_that_speaks_messages_gets_bytes_through(model: str) -> None:
    """The stream ollamux relays is byte for byte the box's own answer to the same ask
    (asked once before, so the box's prompt cache is as warm for both)."""
    body = {"model": model, "max_tokens": 50, "messages": ASK, "stream": True}
    async with fleet() as f, httpx.AsyncClient(trust_env=False) as direct:
        await direct.post(f.box_url(model) + "/v1/messages", json=body)
        via = await f.http.post("/v1/messages", json=body, headers={"anthropic-version": "1"})
        own = await direct.post(f.box_url(model) + "/v1/messages", json=body)
        assert via.status_code == own.status_code == 200
        assert via.headers["content-type"].startswith("text/event-stream")
        assert via.content == own.content
        assert b"event: message_stop" in via.content
        assert via.headers["x-ollamux-endpoint"] == ROUTES[model][0]


async def test_translated_text_is_what_the_model_says_on_its_own_route() -> None:
    """Translation changes the envelope, never the words: the old Ollama's /api/chat
    answer is the message's text."""
    async with fleet() as f:
        message = await f.client().messages.create(model=OLD, max_tokens=20, messages=ASK)
        async with httpx.AsyncClient(trust_env=False) as direct:
            body = {"model": OLD, "messages": ASK, "stream": False, "options": {"num_predict": 20}}
            own = (await direct.post(f.box_url(OLD) + "/api/chat", json=body)).json()
        assert message.content[0].text == own["message"]["content"]  # type: ignore[union-attr]
        assert message.stop_reason == "max_tokens"  # done_reason "length"
        assert message.usage.output_tokens == own["eval_count"]


def claude_code_request(model: str) -> dict[str, Any]:
    """A request shaped as Claude Code sends them: system blocks and tools marked for
    prompt caching, a user id, context management, thinking, a stream."""
    cache = {"type": "ephemeral"}
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    return {
        "model": model,
        "max_tokens": 64,
        "stream": True,
        "temperature": 1,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": cache},
            {"type": "text", "text": "Be concise.", "cache_control": cache},
        ],
        "tools": [{**WEATHER, "input_schema": schema, "cache_control": cache}],
        "metadata": {"user_id": "user_abc_account__session_123"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is the weather in Paris", "cache_control": cache}
                ],
            }
        ],
    }


@pytest.mark.parametrize("model", list(ROUTES))
async def test_a_claude_code_request_on_every_kind_of_box(model: str) -> None:
    headers = {
        "x-api-key": "unused",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    async with fleet() as f:
        resp = await f.http.post(
            "/v1/messages?beta=true", json=claude_code_request(model), headers=headers
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/event-stream")
        names = [line[7:] for line in resp.text.splitlines() if line.startswith("event: ")]
        assert names[0] == "message_start" and names[-1] == "message_stop"
        tool = next(
            orjson.loads(line[6:])["content_block"]
            for line in resp.text.splitlines()
            if line.startswith("data: ") and '"content_block_start"' in line and "tool_use" in line
        )
        assert tool["name"] == "get_weather"
        count = await f.http.post(
            "/v1/messages/count_tokens?beta=true",
            json={k: v for k, v in claude_code_request(model).items() if k != "max_tokens"},
            headers=headers,
        )
        assert count.status_code == 200 and count.json()["input_tokens"] > 0
        users = [u["user"] for u in f.services.dispatcher.users()]
        assert users == ["user_abc_account__session_123"]  # fair share knows who asked


# -- tools ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(ROUTES))
async def test_tool_use_comes_back_with_name_and_input(model: str) -> None:
    async with fleet() as f:
        client = f.client()
        message = await client.messages.create(
            model=model,
            max_tokens=100,
            tools=[WEATHER],
            messages=ASK,  # type: ignore[list-item]
        )
        async with client.messages.stream(
            model=model,
            max_tokens=100,
            tools=[WEATHER],
            messages=ASK,  # type: ignore[list-item]
        ) as stream:
            final = await stream.get_final_message()
    for answer in (message, final):
        assert answer.stop_reason == "tool_use"
        call = next(b for b in answer.content if b.type == "tool_use")
        assert call.name == "get_weather" and call.id
        if ROUTES[model][0] in ("old", "new"):
            assert call.input == {}  # the simulated Ollama model calls tools without arguments
        else:
            assert set(call.input) == {"city"}  # type: ignore[arg-type]
    assert [b.input for b in final.content if b.type == "tool_use"] == [  # type: ignore[union-attr]
        b.input
        for b in message.content
        if b.type == "tool_use"  # type: ignore[union-attr]
    ]


@pytest.mark.parametrize("model", list(ROUTES))
async def test_a_tool_result_continues_the_conversation(model: str) -> None:
    async with fleet() as f:
        client = f.client()
        first = await client.messages.create(
            model=model,
            max_tokens=100,
            tools=[WEATHER],
            messages=ASK,  # type: ignore[list-item]
        )
        call = next(b for b in first.content if b.type == "tool_use")
        turns: list[Any] = [
            *ASK,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}
                ],
            },
        ]
        second = await client.messages.create(
            model=model,
            max_tokens=100,
            tools=[WEATHER],
            messages=turns,  # type: ignore[list-item]
        )
        assert second.stop_reason in ("end_turn", "max_tokens")
        assert second.content[0].type == "text"


async def test_tool_choice_the_box_cannot_honour_is_a_400_naming_it() -> None:
    """Ollama cannot be made to call a tool: translated, or on its own /v1/messages
    (which would ignore the field), the client hears so."""
    async with fleet() as f:
        for model in (OLD, NEW):
            with pytest.raises(anthropic.BadRequestError) as err:
                await f.client().messages.create(
                    model=model,
                    max_tokens=10,
                    tools=[WEATHER],  # type: ignore[list-item]
                    tool_choice={"type": "any"},
                    messages=ASK,
                )
            assert "tool_choice" in str(err.value)
            assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        # A llama-server can be made to call the tool, translated or not.
        for model in (GGUF, PLAIN):
            forced = await f.client().messages.create(
                model=model,
                max_tokens=10,
                tools=[WEATHER],  # type: ignore[list-item]
                tool_choice={"type": "tool", "name": "get_weather"},
                messages=ASK,
            )
            assert forced.stop_reason == "tool_use"


async def test_a_field_a_translated_box_has_no_equivalent_for_is_a_400_naming_it() -> None:
    async with fleet() as f:
        for model in TRANSLATED:
            with pytest.raises(anthropic.BadRequestError) as err:
                await f.client().messages.create(
                    model=model,
                    max_tokens=10,
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "document",
                                    "source": {
                                        "type": "text",
                                        "media_type": "text/plain",
                                        "data": "x",
                                    },
                                }
                            ],
                        }
                    ],
                )
            assert "messages.0.content.0.type" in err.value.message


# -- count_tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("model", list(ROUTES))
async def test_count_tokens(model: str) -> None:
    async with fleet() as f:
        short = await f.client().messages.count_tokens(model=model, messages=ASK)
        longer = await f.client().messages.count_tokens(
            model=model, system="answer in french, briefly and politely", messages=ASK
        )
        assert 0 < short.input_tokens < longer.input_tokens
        if model == GGUF:  # the box counts itself: bytes through
            assert _paths(f, model)[-1] == "/v1/messages/count_tokens"
        if model in (PLAIN, GENERIC):  # a one-token generation whose usage is the count
            sent = orjson.loads(f.llama[ROUTES[model][0]].received[-1][1])
            assert sent["max_tokens"] == 1


async def test_count_tokens_agrees_with_the_box_that_counts_itself() -> None:
    async with fleet() as f:
        native = await f.client().messages.count_tokens(model=GGUF, messages=ASK)
        translated = await f.client().messages.count_tokens(model=PLAIN, messages=ASK)
        assert native.input_tokens == translated.input_tokens


# -- model names, keys, errors --------------------------------------------------------


async def test_an_unknown_model_is_not_found_naming_the_fleets_models() -> None:
    async with fleet() as f:
        with pytest.raises(anthropic.NotFoundError) as err:
            await f.client().messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=ASK)
        assert err.value.body["type"] == "error"  # type: ignore[index]
        assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        assert "claude-sonnet-4-5" in err.value.message
        assert NEW in err.value.message and GGUF in err.value.message


async def test_claude_names_map_to_a_fleet_model_by_glob_alias() -> None:
    async with fleet(aliases={"claude-*": NEW, "gpt-5*": GGUF}) as f:
        message = await f.client().messages.create(
            model="claude-sonnet-4-5-20250929", max_tokens=10, messages=ASK
        )
        assert message.content[0].text  # type: ignore[union-attr]
        resp = await f.http.post(
            "/v1/chat/completions", json={"model": "gpt-5-codex", "messages": ASK}
        )
        assert resp.status_code == 200 and resp.headers["x-ollamux-endpoint"] == "llama"
        # A model a box has is never shadowed by a pattern.
        ollama_chat = {"model": OLD, "messages": ASK, "stream": False}
        own = await f.http.post("/api/chat", json=ollama_chat)
        assert own.headers["x-ollamux-endpoint"] == "old"


async def test_client_keys_as_x_api_key_or_bearer_and_a_bad_one_is_refused() -> None:
    async with fleet(auth={"api_keys": ["sekret"]}) as f:
        with pytest.raises(anthropic.AuthenticationError) as err:
            await f.client(api_key="wrong").messages.create(model=NEW, max_tokens=10, messages=ASK)
        assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        by_key = await f.client(api_key="sekret").messages.create(
            model=GGUF, max_tokens=10, messages=ASK
        )
        by_token = f.client(auth_token="sekret")
        by_bearer = await by_token.messages.create(model=GGUF, max_tokens=10, messages=ASK)
        assert by_key.content == by_bearer.content


async def test_malformed_requests_are_400_in_anthropics_shape() -> None:
    async with fleet() as f:
        for body, field in (
            (b"{", "invalid JSON"),
            (orjson.dumps({"model": NEW, "messages": ASK}), "max_tokens"),
            (orjson.dumps({"model": NEW, "max_tokens": 5}), "messages"),
            (orjson.dumps({"max_tokens": 5, "messages": ASK}), "model"),
        ):
            resp = await f.http.post("/v1/messages", content=body)
            assert resp.status_code == 400
            doc = resp.json()
            assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
            assert field in doc["error"]["message"]


async def test_a_box_error_takes_anthropics_shape() -> None:
    async with fleet() as f:
        f.llama["llama"].faults.error_status = 400  # llama-server's own (OpenAI) shape
        with pytest.raises(anthropic.BadRequestError) as err:
            await f.client().messages.create(model=GGUF, max_tokens=10, messages=ASK)
        assert err.value.body == {  # type: ignore[comparison-overlap]
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "simulated failure"},
        }


# -- learning which boxes serve the route ---------------------------------------------


async def test_a_404_on_the_route_is_learned_not_a_failure() -> None:
    async with fleet() as f:
        for _ in range(3):
            message = await f.client().messages.create(model=PLAIN, max_tokens=10, messages=ASK)
            assert message.content[0].text  # type: ignore[union-attr]
        # The box has no /v1/messages route (its 404 comes before any handler, so it
        # records nothing there): all three answers were translations.
        assert _paths(f, PLAIN).count("/v1/chat/completions") == 3
        box = f.services.prober.fleet.by_name["plain"]
        assert box.routable and box.breaker.value == "closed" and box.health == "healthy"
        assert "/v1/messages" in box.lacking
        status = await f.http.get("/router/status")
        plain = next(e for e in status.json()["endpoints"] if e["name"] == "plain")
        assert plain["health"] == "healthy" and plain["lacking"] == ["/v1/messages"]


async def test_a_404_about_the_model_from_a_messages_box_is_its_answer() -> None:
    """Ollama 0.14 answers an unknown model on /v1/messages with a 404 in Anthropic's
    shape: the route exists, so nothing is learned and the 404 reaches the client."""
    async with fleet() as f:
        del f.ollama["new"].store.models[NEW]  # removed since the last probe
        with pytest.raises(anthropic.NotFoundError) as err:
            await f.client().messages.create(model=NEW, max_tokens=10, messages=ASK)
        assert f"model '{NEW}' not found" in err.value.message
        assert not f.services.prober.fleet.by_name["new"].lacking
        assert f.services.prober.fleet.by_name["new"].routable


# -- a stream cut mid-way -------------------------------------------------------------


@pytest.mark.parametrize(("model", "box"), [(OLD, "old"), (NEW, "new")])
async def test_a_stream_cut_mid_way_ends_with_an_error_event(model: str, box: str) -> None:
    body = {"model": model, "max_tokens": 50, "messages": ASK, "stream": True}
    async with fleet() as f:
        f.ollama[box].faults.kill_after_chunks = 4
        resp = await f.http.post("/v1/messages", json=body)
        assert resp.status_code == 200
        events = resp.text.strip().split("\n\n")
        assert events[0].startswith("event: message_start")
        last = events[-1].split("\n")
        assert last[0] == "event: error"
        error = orjson.loads(last[1].removeprefix("data: "))
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
        with pytest.raises(anthropic.APIStatusError):
            async with f.client().messages.stream(
                model=model, max_tokens=50, messages=ASK
            ) as stream:
                await stream.get_final_message()


# -- accounting -----------------------------------------------------------------------


@pytest.mark.parametrize("model", [OLD, NEW, GGUF, PLAIN])
@pytest.mark.parametrize("stream", [False, True])
async def test_tokens_are_counted_like_every_route(model: str, stream: bool) -> None:
    """The box's final counts reach the totals, the dashboard's feed and /metrics,
    whether the box spoke Messages itself or was translated."""
    async with fleet() as f:
        for box in [*f.ollama.values(), *f.llama.values()]:
            box.config.tokens_per_s = 200  # events arrive one by one, not in one read
        client = f.client()
        if stream:
            async with client.messages.stream(model=model, max_tokens=30, messages=ASK) as s:
                answer = await s.get_final_message()
        else:
            answer = await client.messages.create(model=model, max_tokens=30, messages=ASK)
        name = ROUTES[model][0]
        key = f.services.model_key(model)
        for _ in range(200):
            if (name, key) in f.services.stats.totals:
                break
            await asyncio.sleep(0.01)
        totals = f.services.stats.totals[(name, key)]
        assert totals.requests == 1 and totals.errors == 0
        assert totals.output_tokens == answer.usage.output_tokens > 0
        assert totals.prompt_tokens == answer.usage.input_tokens > 0
        metrics = (await f.http.get("/metrics")).text
        line = f'ollamux_requests_total{{box="{name}",model="{key}",route="/v1/messages"'
        assert line in metrics
