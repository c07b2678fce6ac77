"""Anthropic Messages <-> the boxes' APIs, as tables: requests to OpenAI chat completions
and to Ollama's /api/chat, what cannot be translated (a 400 naming the field), answers
whole and streamed (fed in awkward pieces and put back together as the SDK does: the
stream says what the whole answer says), token counts, error shapes, which boxes serve
the route, glob aliases, and the final-chunk accounting of Anthropic's usage."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from ollamux.backends.relay import _error_tail
from ollamux.backends.translate.anthropic_plan import (
    MESSAGES,
    for_anthropic_client,
    speaks,
)
from ollamux.backends.translate.anthropic_request import chat_request, ollama_chat_request
from ollamux.backends.translate.anthropic_response import (
    AnthropicErrors,
    CountFromOpenAI,
    OpenAIToAnthropic,
    anthropic_error,
    error_type,
    from_ollama,
    message_from_openai,
)
from ollamux.backends.upstream import request_headers
from ollamux.routing.accounting import read_counts
from ollamux.routing.errors import BadRequest, NoCapacity, UpstreamError
from ollamux.routing.fairness import user_of
from ollamux.routing.settings import parse_settings
from ollamux.routing.state import BoxState, pattern_alias, split_aliases, version_key

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 8).decode()
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"c": {}}}}
FUNCTION = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": TOOL["input_schema"]},
}
USER = {"role": "user", "content": "hi"}


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64, "messages": [USER], **extra}


# -- requests -------------------------------------------------------------------------

TOOL_TURNS: list[dict[str, Any]] = [
    USER,
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "look it up", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"c": "Paris"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "text", "text": "and tomorrow?"},
        ],
    },
]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(ask(), {"messages": [USER], "max_tokens": 64, "stream": False}, id="plain"),
        pytest.param(
            ask(system="be brief", stream=True),
            {
                "messages": [{"role": "system", "content": "be brief"}, USER],
                "max_tokens": 64,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            id="system-string-streamed",
        ),
        pytest.param(
            ask(
                system=[
                    {"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "two"},
                ]
            ),
            {
                "messages": [{"role": "system", "content": "one\n\ntwo"}, USER],
                "max_tokens": 64,
                "stream": False,
            },
            id="system-blocks",
        ),
        pytest.param(
            ask(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": PNG,
                                },
                            },
                        ],
                    }
                ]
            ),
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this"},
                            {
                                "type": "image_url",
                                "image_url": {"url": f"data:image/png;base64,{PNG}"},
                            },
                        ],
                    }
                ],
                "max_tokens": 64,
                "stream": False,
            },
            id="image",
        ),
        pytest.param(
            ask(messages=TOOL_TURNS, tools=[TOOL], tool_choice={"type": "auto"}),
            {
                "messages": [
                    USER,
                    {
                        "role": "assistant",
                        "content": "Checking.",
                        "reasoning_content": "look it up",
                        "tool_calls": [
                            {
                                "id": "toolu_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"c":"Paris"}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                    {"role": "user", "content": "and tomorrow?"},
                ],
                "tools": [FUNCTION],
                "tool_choice": "auto",
                "max_tokens": 64,
                "stream": False,
            },
            id="tool-turns",
        ),
        pytest.param(
            ask(
                tools=[TOOL],
                tool_choice={
                    "type": "tool",
                    "name": "get_weather",
                    "disable_parallel_tool_use": True,
                },
            ),
            {
                "messages": [USER],
                "tools": [FUNCTION],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": False,
                "max_tokens": 64,
                "stream": False,
            },
            id="tool-choice-tool",
        ),
        pytest.param(
            ask(tools=[TOOL], tool_choice={"type": "any"}),
            {
                "messages": [USER],
                "tools": [FUNCTION],
                "tool_choice": "required",
                "max_tokens": 64,
                "stream": False,
            },
            id="tool-choice-any",
        ),
        pytest.param(
            ask(
                temperature=0.2,
                top_p=0.9,
                top_k=40,
                stop_sequences=["END"],
                thinking={"type": "enabled", "budget_tokens": 1024},
                metadata={"user_id": "u1"},
                service_tier="auto",
            ),
            {
                "messages": [USER],
                "max_tokens": 64,
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 40,
                "stop": ["END"],
                "reasoning_effort": "medium",
                "user": "u1",
                "stream": False,
            },
            id="sampling-thinking-metadata",
        ),
        pytest.param(
            ask(
                messages=[
                    *TOOL_TURNS[:2],
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_1",
                                "content": [
                                    {"type": "text", "text": "a screenshot:"},
                                    {
                                        "type": "image",
                                        "source": {
                                            "type": "base64",
                                            "media_type": "image/png",
                                            "data": PNG,
                                        },
                                    },
                                ],
                            },
                            {"type": "text", "text": "what do you see?"},
                        ],
                    },
                ]
            ),
            {
                "messages": [
                    USER,
                    chat_request(ask(messages=TOOL_TURNS))["messages"][1],
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "a screenshot:"},
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": f"data:image/png;base64,{PNG}"},
                            },
                            {"type": "text", "text": "what do you see?"},
                        ],
                    },
                ],
                "max_tokens": 64,
                "stream": False,
            },
            id="tool-result-image",
        ),
        pytest.param(
            ask(
                context_management={"edits": [{"type": "clear_tool_uses_20250919"}]},
                output_config={"effort": "xhigh", "format": {"type": "json_schema", "schema": {}}},
            ),
            {
                "messages": [USER],
                "max_tokens": 64,
                "reasoning_effort": "high",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": {}},
                },
                "stream": False,
            },
            id="claude-code-extras",
        ),
        pytest.param(
            ask(output_format={"type": "json_schema", "schema": {"type": "object"}}),
            {
                "messages": [USER],
                "max_tokens": 64,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": {"type": "object"}},
                },
                "stream": False,
            },
            id="output-format",
        ),
        pytest.param(
            ask(thinking={"type": "disabled"}),
            {"messages": [USER], "max_tokens": 64, "reasoning_effort": "none", "stream": False},
            id="thinking-off",
        ),
    ],
)
def test_messages_request_as_chat_completions(
    doc: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert chat_request(doc) == {"model": "m", **expected}


def test_messages_request_as_ollama_chat() -> None:
    doc = ask(
        messages=[
            *TOOL_TURNS[:2],
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "x",
                        "is_error": True,
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            },
        ],
        system="sys",
        tools=[TOOL],
        stop_sequences=["END"],
        top_k=5,
        thinking={"type": "enabled", "budget_tokens": 100},
        stream=True,
    )
    body = ollama_chat_request(doc)
    assert body["think"] is True
    assert body["stream"] is True
    assert body["options"] == {"num_predict": 64, "stop": ["END"], "top_k": 5}
    assert body["tools"] == [FUNCTION]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assistant, result, user = body["messages"][2:]
    assert assistant["tool_calls"][0]["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {"c": "Paris"},
    }
    assert assistant["thinking"] == "look it up"
    assert result == {
        "role": "tool",
        "content": "Error: x",
        "tool_name": "get_weather",
        "tool_call_id": "toolu_1",
    }
    assert user["images"] == [PNG]


def test_a_tool_results_image_reaches_an_ollama_box() -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
        ],
    }
    body = ollama_chat_request(
        ask(messages=[*TOOL_TURNS[:2], {"role": "user", "content": [result]}])
    )
    tool, user = body["messages"][-2:]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "toolu_1"
    assert user == {"role": "user", "content": "", "images": [PNG]}


def test_context_management_is_answered_with_no_edits_applied() -> None:
    message, finish = ANSWERS[0][0], ANSWERS[0][1]
    whole = OpenAIToAnthropic("m", stream=False, edits=True, ident=lambda: "msg_1")
    out = orjson.loads(whole.whole(200, orjson.dumps(completion(message, finish))))
    assert out["context_management"] == {"applied_edits": []}
    stream = OpenAIToAnthropic("m", stream=True, edits=True, ident=lambda: "msg_1")
    data = stream.chunk(openai_stream(message, finish)) + stream.end()
    delta = next(doc for name, doc in events(data) if name == "message_delta")
    assert delta["context_management"] == {"applied_edits": []}
    plain = OpenAIToAnthropic("m", stream=False, ident=lambda: "msg_1")
    assert "context_management" not in orjson.loads(
        plain.whole(200, orjson.dumps(completion(message, finish)))
    )


def test_tool_choice_none_offers_an_ollama_box_no_tools() -> None:
    body = ollama_chat_request(ask(tools=[TOOL], tool_choice={"type": "none"}))
    assert "tools" not in body


def test_count_tokens_is_a_one_token_generation() -> None:
    doc = {"model": "m", "messages": [USER], "tools": [TOOL]}
    assert chat_request(doc, count=True)["max_tokens"] == 1
    assert chat_request(doc, count=True)["stream"] is False
    assert ollama_chat_request(doc, count=True)["options"]["num_predict"] == 1


@pytest.mark.parametrize(
    ("doc", "field", "ollama_only"),
    [
        (ask(container="c1"), "container", False),
        (ask(mcp_servers=[]), "mcp_servers", False),
        (
            ask(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]),
            "messages.0.content.0.type",
            False,
        ),
        (ask(messages=[{"role": "system", "content": "x"}]), "messages.0.role", False),
        (ask(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type", False),
        (ask(tools=[{**TOOL, "strict": True}]), "tools.0.strict", False),
        (
            ask(tools=[TOOL], tool_choice={"type": "tool", "name": "other"}),
            "tool_choice.name",
            False,
        ),
        (ask(thinking={"type": "sometimes"}), "thinking.type", False),
        (ask(context_management="clear"), "context_management", False),
        (ask(output_config={"format": {"type": "text"}}), "output_config.format.type", False),
        (ask(output_config={"effort": "huge"}), "output_config.effort", False),
        (ask(output_config={"task_budget": 5}), "output_config.task_budget", False),
        (ask(metadata={"user_id": "u", "tags": []}), "metadata.tags", False),
        (ask(max_tokens=0), "max_tokens", False),
        (
            ask(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "document", "source": {}}],
                            }
                        ],
                    }
                ]
            ),
            "messages.0.content.0.content.0.type",
            False,
        ),
        (ask(tools=[TOOL], tool_choice={"type": "any"}), "tool_choice", True),
        (
            ask(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
                        ],
                    }
                ]
            ),
            "base64",
            True,
        ),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_it(
    doc: dict[str, Any], field: str, ollama_only: bool
) -> None:
    with pytest.raises(BadRequest) as err:
        ollama_chat_request(doc)
    if ollama_only:
        assert field in err.value.message
        chat_request(doc)  # an OpenAI box can take it
    else:
        with pytest.raises(BadRequest) as err:
            chat_request(doc)
        assert field in err.value.message


# -- answers --------------------------------------------------------------------------

ANSWERS: list[tuple[dict[str, Any], str, list[dict[str, Any]], str]] = [
    (
        {"role": "assistant", "content": "Hello there."},
        "stop",
        [{"type": "text", "text": "Hello there."}],
        "end_turn",
    ),
    (
        {"role": "assistant", "content": "Hel"},
        "length",
        [{"type": "text", "text": "Hel"}],
        "max_tokens",
    ),
    (
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "they want weather",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"c": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                },
            ],
        },
        "tool_calls",
        [
            {"type": "thinking", "thinking": "they want weather", "signature": ""},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"c": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        ],
        "tool_use",
    ),
    (
        {"role": "assistant", "content": "", "reasoning_content": "hm"},
        "stop",
        [{"type": "thinking", "thinking": "hm", "signature": ""}],
        "end_turn",
    ),
]
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion", "choices": [choice], "usage": USAGE}


@pytest.mark.parametrize(("message", "finish", "content", "reason"), ANSWERS)
def test_whole_answers(
    message: dict[str, Any], finish: str, content: list[dict[str, Any]], reason: str
) -> None:
    out = message_from_openai(completion(message, finish), model="claude-x", ident="msg_1")
    assert out == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }
    whole = OpenAIToAnthropic("claude-x", stream=False, ident=lambda: "msg_1")
    assert orjson.loads(whole.whole(200, orjson.dumps(completion(message, finish)))) == out


def openai_stream(message: dict[str, Any], finish: str) -> bytes:
    """The chunks an OpenAI box streams for ``message``: text and reasoning a few
    characters at a time, each tool call's name first and its arguments in pieces."""

    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        return b"data: " + orjson.dumps({"id": "c", "choices": [choice]}) + b"\r\n\r\n"

    out = chunk({"role": "assistant", "content": None})
    for field in ("reasoning_content", "content"):
        text = message.get(field) or ""
        out += b"".join(chunk({field: text[i : i + 3]}) for i in range(0, len(text), 3))
    for j, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        first = {"index": j, "id": call["id"], "type": "function"}
        out += chunk({"tool_calls": [{**first, "function": {"name": fn["name"]}}]})
        args = fn["arguments"]
        for i in range(0, len(args), 4):
            piece = {"index": j, "function": {"arguments": args[i : i + 4]}}
            out += chunk({"tool_calls": [piece]})
    out += chunk({}, finish)
    out += b"data: " + orjson.dumps({"id": "c", "choices": [], "usage": USAGE}) + b"\n\n"
    return out + b"data: [DONE]\n\n"


def events(data: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    for block in data.decode().split("\n\n"):
        if block.strip():
            name, payload = block.split("\n")
            yield name.removeprefix("event: "), orjson.loads(payload.removeprefix("data: "))


def accumulate(data: bytes) -> dict[str, Any]:
    """Events put back together into the message, as the SDK's stream helper does; and
    the stream's grammar checked on the way (blocks open, delta, close in order)."""
    names = [name for name, _ in events(data)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    open_block: int | None = None
    for name, doc in events(data):
        assert doc["type"] == name
        if name == "message_start":
            message = doc["message"]
        elif name == "content_block_start":
            assert open_block is None and doc["index"] == len(message["content"])
            open_block = doc["index"]
            message["content"].append(dict(doc["content_block"]))
        elif name == "content_block_delta":
            assert doc["index"] == open_block
            block, delta = message["content"][doc["index"]], doc["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                partial[doc["index"]] = partial.get(doc["index"], "") + delta["partial_json"]
        elif name == "content_block_stop":
            assert doc["index"] == open_block
            open_block = None
            if doc["index"] in partial:
                message["content"][doc["index"]]["input"] = orjson.loads(partial[doc["index"]])
        elif name == "message_delta":
            message.update(doc["delta"])
            message["usage"] = doc["usage"]
    return message


@pytest.mark.parametrize("piece", [1, 7, 10_000])
@pytest.mark.parametrize(("message", "finish", "content", "reason"), ANSWERS)
def test_streamed_answers_say_what_whole_ones_say(
    message: dict[str, Any], finish: str, content: list[dict[str, Any]], reason: str, piece: int
) -> None:
    translator = OpenAIToAnthropic("claude-x", stream=True, ident=lambda: "msg_1")
    data = openai_stream(message, finish)
    out = b"".join(translator.chunk(data[i : i + piece]) for i in range(0, len(data), piece))
    out += translator.end()
    whole = message_from_openai(completion(message, finish), model="claude-x", ident="msg_1")
    assert accumulate(out) == whole
    assert translator.content_type(200, "text/event-stream") == "text/event-stream"


def test_a_box_that_answers_whole_though_asked_to_stream_still_streams() -> None:
    message, finish = ANSWERS[2][0], ANSWERS[2][1]
    translator = OpenAIToAnthropic("claude-x", stream=True, ident=lambda: "msg_1")
    out = translator.whole(200, orjson.dumps(completion(message, finish)))
    assert accumulate(out) == message_from_openai(
        completion(message, finish), model="claude-x", ident="msg_1"
    )


def ollama_lines(message: dict[str, Any], finish: str) -> bytes:
    def line(doc: dict[str, Any]) -> bytes:
        return orjson.dumps({"model": "m", "created_at": "2025-01-01T00:00:00Z", **doc}) + b"\n"

    out = b""
    for field, own in (("reasoning_content", "thinking"), ("content", "content")):
        text = message.get(field) or ""
        for i in range(0, len(text), 3):
            out += line({"message": {"role": "assistant", "content": "", own: text[i : i + 3]}})
    calls = [
        {"function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
        for c in message.get("tool_calls") or []
    ]
    for call in calls:
        args = call["function"]["arguments"]
        call["function"]["arguments"] = orjson.loads(args) if args else {}
    if calls:
        out += line({"message": {"role": "assistant", "content": "", "tool_calls": calls}})
    final = {"message": {"role": "assistant", "content": ""}, "done": True}
    final.update(done_reason=finish, prompt_eval_count=12, eval_count=5)
    return out + line(final)


@pytest.mark.parametrize(("message", "finish", "content", "reason"), ANSWERS)
def test_an_ollama_boxs_stream_through_the_chain(
    message: dict[str, Any], finish: str, content: list[dict[str, Any]], reason: str
) -> None:
    done = "length" if finish == "length" else "stop"
    chain = from_ollama("claude-x", stream=True)
    data = ollama_lines(message, done)
    out = b"".join(chain.chunk(data[i : i + 5]) for i in range(0, len(data), 5)) + chain.end()
    got = accumulate(out)
    assert got["stop_reason"] == reason
    assert got["usage"] == {"input_tokens": 12, "output_tokens": 5}
    # Ollama's tool calls carry no ids: they get fresh ones; the rest is the same.
    for block in got["content"]:
        if block["type"] == "tool_use":
            assert block.pop("id")
    expected = [{k: v for k, v in b.items() if k != "id"} for b in content]
    assert got["content"] == expected
    assert chain.content_type(200, "application/x-ndjson") == "text/event-stream"


def test_an_error_in_the_boxs_stream_becomes_an_error_event() -> None:
    translator = OpenAIToAnthropic("m", stream=True, ident=lambda: "msg_1")
    data = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    data += b'data: {"error":{"message":"out of memory","type":"server_error"}}\n\n'
    out = list(events(translator.chunk(data) + translator.end()))
    assert out[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "out of memory"}},
    )
    chain = from_ollama("m", stream=True)
    tail = list(events(chain.chunk(b'{"error":"model crashed"}\n') + chain.end()))
    assert tail[-1][0] == "error" and tail[-1][1]["error"]["message"] == "model crashed"


def test_counts() -> None:
    answer = orjson.dumps(completion({"role": "assistant", "content": "x"}, "length"))
    assert orjson.loads(CountFromOpenAI().whole(200, answer)) == {"input_tokens": 12}
    ollama = b'{"message":{"role":"assistant","content":"x"},"done":true,"prompt_eval_count":9}'
    assert orjson.loads(from_ollama("m", stream=False, count=True).whole(200, ollama)) == {
        "input_tokens": 9
    }


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_types(status: int, kind: str) -> None:
    assert error_type(status) == kind


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, b'{"error":"model \\"x\\" not found"}', 'model "x" not found'),
        (400, b'{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}', "bad"),
        (500, b"upstream exploded", "upstream exploded"),
    ],
)
def test_box_errors_take_anthropics_shape(status: int, body: bytes, message: str) -> None:
    for translator in (
        AnthropicErrors(),
        CountFromOpenAI(),
        OpenAIToAnthropic("m", stream=True),
        from_ollama("m", stream=True),
    ):
        out = orjson.loads(translator.whole(status, body))
        assert out == {"type": "error", "error": {"type": error_type(status), "message": message}}
        assert translator.content_type(status, "text/plain") == "application/json"
    own = b'{"type":"error","error":{"type":"not_found_error","message":"m"}}'
    assert anthropic_error(404, own) == own  # a Messages box's own error, untouched


def test_a_messages_box_answer_passes_byte_for_byte() -> None:
    translator = AnthropicErrors()
    chunk = b'event: ping\ndata: {"type": "ping"}\n\n'
    assert translator.chunk(chunk) is chunk and translator.end() == b""
    assert translator.content_type(200, "text/event-stream; x=1") == "text/event-stream; x=1"
    assert translator.whole(200, b'{"a":1}') == b'{"a":1}'


def test_a_cut_stream_ends_with_anthropics_error_event() -> None:
    cut = UpstreamError("box gone", box="a")
    for translator in (
        AnthropicErrors(),  # bytes through from a box that speaks Messages
        OpenAIToAnthropic("m", stream=True),
        from_ollama("m", stream=True),
    ):
        assert list(events(translator.broken(cut))) == [
            ("error", {"type": "error", "error": {"type": "api_error", "message": "box gone"}})
        ]
    closing = AnthropicErrors().broken(NoCapacity("shutting down"))
    assert next(events(closing))[1]["error"]["type"] == "overloaded_error"
    # Other routes keep their own framing.
    assert _error_tail("text/event-stream", cut).startswith(b"data: ")


def test_client_keys_never_reach_a_box_but_anthropic_headers_do() -> None:
    client = {
        "x-api-key": "k",
        "authorization": "Bearer k",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "tools-2024",
        "content-type": "application/json",
    }
    sent = request_headers(client, "box-key")
    assert sent["authorization"] == "Bearer box-key" and "x-api-key" not in sent
    assert sent["anthropic-version"] == "2023-06-01" and sent["anthropic-beta"] == "tools-2024"


# -- which boxes serve /v1/messages ---------------------------------------------------


def box(kind: str, version: str | None, name: str = "b") -> BoxState:
    return BoxState(name, "http://b", kind, 0, 0, 2, version=version)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "version", "messages", "count"),
    [
        ("ollama", "0.12.6", False, False),
        ("ollama", "0.13.3", False, False),
        ("ollama", "0.14.0", True, False),
        ("ollama", "0.14.0-rc1", True, False),
        ("ollama", "1.2.0", True, False),
        ("ollama", None, False, False),
        ("llama-server", "b6500", True, True),
        ("llama-server", None, True, True),
        ("openai", None, False, False),
    ],
)
def test_which_boxes_serve_messages(
    kind: str, version: str | None, messages: bool, count: bool
) -> None:
    assert speaks(box(kind, version)) is messages
    assert speaks(box(kind, version), count=True) is count


def test_a_box_known_to_lack_the_route_is_translated() -> None:
    lacking = replace(box("llama-server", "b6000"), lacking=frozenset({MESSAGES}))
    assert not speaks(lacking)
    assert speaks(lacking, count=True)  # each route is learned on its own
    assert speaks(box("llama-server", "b6000", name="other"))


@pytest.mark.parametrize(
    ("answer", "learned"),
    [
        (b"404 page not found", True),  # Ollama before 0.14
        (b'{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}', True),
        (b"", True),
        (b'{"type":"error","error":{"type":"not_found_error","message":"model gone"}}', False),
    ],
)
def test_a_404_on_the_route_is_learned_unless_it_is_the_boxs_own_answer(
    answer: bytes, learned: bool
) -> None:
    llama = box("llama-server", "b1")
    routed = for_anthropic_client("/v1/messages", b"{}", ask(), "m", "m:latest")
    native = routed.plan(llama)
    assert native.path == "/v1/messages" and native.instead is not None
    instead = native.instead(answer)
    assert (instead is not None) is learned
    if instead is not None:
        assert instead.path == "/v1/chat/completions" and instead.instead is None
        # Once the relay has seen the translation answered, the box lacks the route:
        learnt = replace(llama, lacking=frozenset({MESSAGES}))
        assert routed.plan(learnt).path == "/v1/chat/completions"  # from now on


@pytest.mark.parametrize(
    ("text", "parts"),
    [("0.14.0", (0, 14, 0)), ("v0.9.10-rc2", (0, 9, 10)), ("b6500", (0,)), (None, ())],
)
def test_version_key(text: str | None, parts: tuple[int, ...]) -> None:
    assert version_key(text) == parts


def test_anthropics_user_id_is_the_fair_share_user() -> None:
    doc = {"metadata": {"user_id": "user_abc_session_1"}}
    assert user_of(None, {}, doc) == "user_abc_session_1"
    assert user_of("team-a", {}, doc) == "team-a"  # a key's name still comes first
    assert user_of(None, {"x-user-id": "bob"}, doc) == "bob"
    assert user_of(None, {}, {"metadata": {"user_id": 7}}) == "anonymous"


# -- aliases and accounting -----------------------------------------------------------


def test_glob_aliases_keep_the_exact_form_working() -> None:
    settings = parse_settings(
        {
            "endpoints": ["http://127.0.0.1:1"],
            "aliases": {"claude-*": "qwen3-coder:30b", "org/Q-GGUF:Q4": "q", "gpt-?-mini": "g"},
        }
    )
    exact, patterns = split_aliases(settings.aliases)
    assert exact == {"org/Q-GGUF:Q4": "q"}
    assert pattern_alias("claude-sonnet-4-5", patterns) == "qwen3-coder:30b"
    assert pattern_alias("claude-opus-4-1-20250805", patterns) == "qwen3-coder:30b"
    assert pattern_alias("gpt-4-mini", patterns) == "g"
    assert pattern_alias("gpt-4o-mini", patterns) is None
    assert pattern_alias("llama3.2", patterns) is None


@pytest.mark.parametrize(
    ("tail", "prompt", "output"),
    [
        (
            b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
            b'"end_turn"},"usage":{"input_tokens":31,"output_tokens":7}}\n\nevent: message_stop'
            b'\ndata: {"type":"message_stop"}\n\n',
            31,
            7,
        ),
        (
            b'{"id":"msg_1","content":[{"type":"tool_use","input":{"output_tokens":99}}],'
            b'"usage":{"input_tokens":4,"output_tokens":2}}',
            4,
            2,
        ),
    ],
)
def test_anthropic_usage_is_counted(tail: bytes, prompt: int, output: int) -> None:
    counts = read_counts(tail)
    assert (counts.prompt_tokens, counts.output_tokens) == (prompt, output)
