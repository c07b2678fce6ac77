"""Translation between Ollama's API and OpenAI's, as tables: requests both ways and back,
whole answers both ways and back, and streams fed in awkward pieces (finish-only and
usage-only chunks, empty deltas, several tool calls in fragments, events split anywhere).
Also the per-box plans: bytes through when the box speaks the client's API."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ollamux.backends.translate import ollama_client as to_openai
from ollamux.backends.translate import openai_client as to_ollama
from ollamux.backends.translate.common import (
    done_reason,
    finish_reason,
    image_data,
    image_url,
    ollama_format,
    openai_params,
    response_format,
    think_effort,
)
from ollamux.backends.translate.plans import for_ollama_client, for_openai_client
from ollamux.routing.errors import BadRequest
from ollamux.routing.settings import ConfigError, parse_settings
from ollamux.routing.state import BoxState, Fleet, Health, model_key

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 8).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 8).decode()
SCHEMA = {"title": "City weather", "type": "object", "properties": {"t": {"type": "number"}}}


# -- small tables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "done", "tools", "back"),
    [
        ("stop", "stop", False, "stop"),
        ("length", "length", False, "length"),
        ("tool_calls", "stop", True, "tool_calls"),
        ("content_filter", "stop", False, "stop"),
        (None, "stop", False, "stop"),
    ],
)
def test_finish_reasons(finish: str | None, done: str, tools: bool, back: str) -> None:
    assert done_reason(finish) == done
    assert finish_reason(done, tools) == back


@pytest.mark.parametrize(
    ("fmt", "openai"),
    [
        ("json", {"type": "json_object"}),
        (
            SCHEMA,
            {"type": "json_schema", "json_schema": {"name": "City_weather", "schema": SCHEMA}},
        ),
        (
            {"type": "string"},
            {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": {"type": "string"}},
            },
        ),
        (None, None),
        ("", None),
    ],
)
def test_format_both_ways(fmt: Any, openai: dict[str, Any] | None) -> None:
    assert response_format(fmt) == openai
    assert ollama_format(openai) == (fmt or None)


@pytest.mark.parametrize(
    ("options", "llama", "params"),
    [
        (
            {"num_predict": 5, "temperature": 0.2, "top_p": 0.9, "seed": 7},
            False,
            {"max_tokens": 5, "temperature": 0.2, "top_p": 0.9, "seed": 7},
        ),
        ({"stop": ["\n"], "top_k": 3, "num_ctx": 8192}, False, {"stop": ["\n"]}),
        (
            {"stop": ["\n"], "top_k": 3, "repeat_penalty": 1.1},
            True,
            {"stop": ["\n"], "top_k": 3, "repeat_penalty": 1.1},
        ),
        ({"num_predict": -1}, False, {}),
        (None, True, {}),
    ],
)
def test_options_as_params(options: Any, llama: bool, params: dict[str, Any]) -> None:
    assert openai_params(options, llama=llama) == params


@pytest.mark.parametrize(
    ("think", "effort"),
    [(False, "none"), (True, "medium"), ("high", "high"), ("low", "low"), (None, None)],
)
def test_think_as_reasoning_effort(think: Any, effort: str | None) -> None:
    assert think_effort(think) == effort


@pytest.mark.parametrize(("image", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg")])
def test_images_as_data_urls_and_back(image: str, mime: str) -> None:
    url = image_url(image)
    assert url == f"data:{mime};base64,{image}"
    assert image_data(url) == image


@pytest.mark.parametrize(
    "url", ["https://example.invalid/a.png", "data:image/png,rawbytes", "data:image/png;base64,@@"]
)
def test_images_ollama_cannot_take(url: str) -> None:
    with pytest.raises(BadRequest):
        image_data(url)


def test_aliases_are_one_routing_key_and_checked_at_start() -> None:
    aliases = {"org/llama-GGUF:Q4_K_M": "llama3.2", "model.gguf:latest": "mine"}
    assert model_key("org/llama-GGUF:Q4_K_M", aliases) == "llama3.2:latest"
    assert model_key("llama3.2", aliases) == "llama3.2:latest"
    assert model_key("model.gguf", aliases) == "mine:latest"
    assert model_key("other", aliases) == "other:latest"
    with pytest.raises(ConfigError, match=r"aliases\.x"):
        parse_settings({"endpoints": ["http://127.0.0.1:1"], "aliases": {"x": 3}})


# -- requests, both ways and back -----------------------------------------------------

OLLAMA_CHATS = [
    pytest.param(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        id="text",
    ),
    pytest.param(
        [{"role": "user", "content": "what is this?", "images": [PNG, JPEG]}], id="images"
    ),
    pytest.param(
        [
            {"role": "user", "content": "weather in Paris and Rome"},
            {
                "role": "assistant",
                "content": "",
                "thinking": "two cities",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}},
                    },
                    {
                        "id": "call_b",
                        "function": {"index": 1, "name": "weather", "arguments": {"city": "Rome"}},
                    },
                ],
            },
            {"role": "tool", "tool_name": "weather", "content": "sunny", "tool_call_id": "call_a"},
            {"role": "tool", "tool_name": "weather", "content": "rain", "tool_call_id": "call_b"},
        ],
        id="tool-calls",
    ),
]


@pytest.mark.parametrize("messages", OLLAMA_CHATS)
def test_ollama_chat_request_round_trip(messages: list[dict[str, Any]]) -> None:
    doc = {
        "model": "m",
        "messages": messages,
        "format": SCHEMA,
        "options": {"num_predict": 9, "temperature": 0.1, "stop": ["x"]},
        "think": "high",
        "stream": False,
    }
    conv = to_openai.chat_request(doc)
    assert conv.path == "/v1/chat/completions"
    assert conv.body["max_tokens"] == 9 and conv.body["reasoning_effort"] == "high"
    assert conv.body["stream"] is False and "stream_options" not in conv.body
    back = to_ollama.chat_request(conv.body)
    assert back["messages"] == messages
    assert back["format"] == SCHEMA and back["think"] == "high"
    assert back["options"] == doc["options"] and back["stream"] is False


def test_ollama_tool_calls_without_ids_get_matched_ids() -> None:
    """Ollama clients often drop tool call ids; results are matched to calls by name."""
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "a", "arguments": {}}},
                {"function": {"name": "b", "arguments": {"x": 1}}},
            ],
        },
        {"role": "tool", "tool_name": "b", "content": "B"},
        {"role": "tool", "tool_name": "a", "content": "A"},
    ]
    out = to_openai.openai_messages(messages)
    ids = [c["id"] for c in out[1]["tool_calls"]]
    assert len(set(ids)) == 2 and out[1]["content"] is None
    assert [out[2]["tool_call_id"], out[3]["tool_call_id"]] == [ids[1], ids[0]]
    assert out[1]["tool_calls"][1]["function"]["arguments"] == '{"x":1}'


def test_openai_chat_request_round_trip() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": image_url(PNG)}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "look", "arguments": '{"z":2}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
    ]
    doc = {
        "model": "m",
        "messages": messages,
        "response_format": {"type": "json_object"},
        "max_completion_tokens": 12,
        "stop": "END",
        "reasoning_effort": "none",
        "stream": True,
    }
    native = to_ollama.chat_request(doc)
    assert native["messages"][0]["role"] == "system"
    assert native["messages"][1] == {"role": "user", "content": "what is this?", "images": [PNG]}
    assert native["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"z": 2}
    assert native["messages"][3]["tool_name"] == "look"
    assert native["format"] == "json" and native["think"] is False
    assert native["options"] == {"num_predict": 12, "stop": ["END"]} and native["stream"] is True
    again = to_openai.chat_request(native)
    assert again.body["messages"][1]["content"] == messages[1]["content"]
    assert again.body["messages"][2]["tool_calls"][0]["id"] == "c1"
    assert again.body["messages"][3]["tool_call_id"] == "c1"
    assert again.body["response_format"] == {"type": "json_object"}
    assert again.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("doc", "path", "prompt"),
    [
        ({"model": "m", "prompt": "once", "suffix": "end"}, "/v1/completions", "once"),
        ({"model": "m", "prompt": "what?", "images": [PNG]}, "/v1/chat/completions", None),
        ({"model": "m", "prompt": "hi", "system": "be terse"}, "/v1/chat/completions", None),
    ],
)
def test_generate_goes_to_completions_unless_it_needs_chat(
    doc: dict[str, Any], path: str, prompt: str | None
) -> None:
    conv = to_openai.generate_request(doc)
    assert conv.path == path and conv.body["stream"] is True
    if prompt is None:
        user = conv.body["messages"][-1]
        assert user["role"] == "user" and doc["prompt"] in orjson.dumps(user["content"]).decode()
    else:
        assert conv.body["prompt"] == prompt and conv.body["suffix"] == "end"
        back = to_ollama.completion_request(conv.body)
        assert back["prompt"] == prompt and back["suffix"] == "end"


@pytest.mark.parametrize(
    ("doc", "legacy", "text"),
    [
        ({"model": "m", "input": ["a", "b"]}, False, ["a", "b"]),
        ({"model": "m", "input": "a", "dimensions": 4}, False, "a"),
        ({"model": "m", "prompt": "a"}, True, "a"),
    ],
)
def test_embed_requests(doc: dict[str, Any], legacy: bool, text: Any) -> None:
    conv = to_openai.embed_request(doc, legacy=legacy)
    assert conv.body["input"] == text and conv.body["encoding_format"] == "float"
    back = to_ollama.embed_request(conv.body)
    assert back["input"] == text and back.get("dimensions") == doc.get("dimensions")


@pytest.mark.parametrize(
    "bad",
    [
        lambda: to_ollama.completion_request({"model": "m", "prompt": ["a", "b"]}),
        lambda: to_ollama.embed_request({"model": "m", "input": [[1, 2]]}),
        lambda: to_ollama.chat_request(
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}
        ),
        lambda: to_ollama.chat_request(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}],
                    }
                ],
            }
        ),
        lambda: to_openai.chat_request(
            {"model": "m", "messages": [{"role": "user", "images": "x"}]}
        ),
        lambda: to_openai.embed_request({"model": "m", "input": 3}, legacy=False),
    ],
)
def test_requests_that_cannot_be_translated(bad: Any) -> None:
    with pytest.raises(BadRequest):
        bad()


# -- whole answers ----------------------------------------------------------------------

OPENAI_ANSWERS = [
    pytest.param({"role": "assistant", "content": "hello"}, "stop", id="text"),
    pytest.param({"role": "assistant", "content": "cut"}, "length", id="length"),
    pytest.param(
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "hmm",
            "tool_calls": [
                {
                    "id": "c1",
                    "index": 0,
                    "type": "function",
                    "function": {"name": "a", "arguments": '{"x":1}'},
                },
                {
                    "id": "c2",
                    "index": 1,
                    "type": "function",
                    "function": {"name": "b", "arguments": "{}"},
                },
            ],
        },
        "tool_calls",
        id="two-tool-calls",
    ),
]


@pytest.mark.parametrize(("message", "reason"), OPENAI_ANSWERS)
def test_chat_answer_round_trip(message: dict[str, Any], reason: str) -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    doc = {
        "id": "x",
        "created": 1700000000,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        "usage": usage,
        "timings": {"prompt_ms": 2.0, "predicted_ms": 30.0},
    }
    native = to_openai.ollama_answer(
        doc, model="m", generate=False, created_at="2023-11-14T22:13:20Z"
    )
    assert native["done"] is True and native["done_reason"] == done_reason(reason)
    assert native["prompt_eval_count"] == 5 and native["eval_count"] == 3
    assert native["eval_duration"] == 30_000_000
    back = to_ollama.openai_answer(native, model="m", completion=False, ident="x")
    assert back["choices"][0]["message"] == message
    assert back["choices"][0]["finish_reason"] == reason
    assert back["usage"] == usage and back["created"] == 1700000000


def test_completion_answer_round_trip() -> None:
    doc = {
        "choices": [{"index": 0, "text": "once upon", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
    }
    native = to_openai.ollama_answer(doc, model="m", generate=True, created_at="t")
    assert native["response"] == "once upon" and native["done_reason"] == "length"
    back = to_ollama.openai_answer(native, model="m", completion=True, ident="x")
    assert back["choices"][0]["text"] == "once upon" and back["usage"] == doc["usage"]


@pytest.mark.parametrize("b64", [False, True])
def test_embeddings_round_trip(b64: bool) -> None:
    vectors = [[0.5, -0.25], [1.0, 0.0], [0.125, 2.0]]
    native = {"embeddings": vectors, "prompt_eval_count": 3}
    listed = to_ollama.openai_embeddings(native, model="m", base64=b64)
    assert [d["index"] for d in listed["data"]] == [0, 1, 2]
    if b64:  # floats that survive float32 exactly
        for d in listed["data"]:
            d["embedding"] = list(orjson.loads(orjson.dumps(_unpack(d["embedding"]))))
    shuffled = {**listed, "data": listed["data"][::-1]}  # boxes may answer out of order
    back = to_openai.ollama_embeddings(shuffled, model="m", legacy=False)
    assert back == {"model": "m", "embeddings": vectors, "prompt_eval_count": 3}
    assert to_openai.ollama_embeddings(shuffled, model="m", legacy=True) == {
        "embedding": vectors[0]
    }


def _unpack(text: str) -> list[float]:
    from ollamux.backends.translate.common import base64_floats

    return base64_floats(text)


@pytest.mark.parametrize(
    ("translator", "status", "body", "expected"),
    [
        (
            to_openai.OpenAIToOllama("m", stream=True, generate=False),
            400,
            b'{"error":{"code":400,"message":"bad thing","type":"invalid_request_error"}}',
            {"error": "bad thing"},
        ),
        (
            to_openai.EmbeddingsToOllama("m", legacy=False),
            503,
            b"upstream down",
            {"error": "upstream down"},
        ),
        (
            to_ollama.OllamaToOpenAI("m", stream=True, completion=False),
            404,
            b'{"error":"model not found"}',
            {"error": {"message": "model not found", "type": "not_found_error", "code": 404}},
        ),
        (
            to_ollama.OllamaToEmbeddings("m", base64=False),
            500,
            b'{"error":"boom"}',
            {"error": {"message": "boom", "type": "api_error", "code": 500}},
        ),
    ],
)
def test_error_bodies_take_the_clients_shape(
    translator: Any, status: int, body: bytes, expected: Any
) -> None:
    assert translator.content_type(status, "application/json") == "application/json"
    assert orjson.loads(translator.whole(status, body)) == expected


# -- streams ----------------------------------------------------------------------------


def _sse(*events: Any) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events
    )


def _chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "s", "object": "chat.completion.chunk", "created": 1, "choices": choices, **extra}


AWKWARD_STREAM = _sse(
    _chunk({"role": "assistant", "content": None}),  # an empty delta
    _chunk({"reasoning_content": "let me "}),
    _chunk({"reasoning_content": "see"}),
    _chunk({"content": "Checking "}),
    _chunk({"content": ""}),  # another empty delta
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "time", "arguments": "{}"},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    _chunk({}, "tool_calls"),  # finish only
    _chunk(
        None,
        usage={"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
        timings={"prompt_ms": 1.5, "predicted_ms": 20.0},
    ),  # usage only
    b"[DONE]",
)


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_openai_stream_as_ollama_lines(size: int) -> None:
    t = to_openai.OpenAIToOllama("m", stream=True, generate=False, clock=lambda: "T")
    out = b"".join(t.chunk(p) for p in _pieces(AWKWARD_STREAM, size)) + t.end()
    lines = [orjson.loads(x) for x in out.splitlines()]
    assert all(x["model"] == "m" and x["created_at"] == "T" for x in lines)
    assert [x["done"] for x in lines] == [False] * (len(lines) - 1) + [True]
    assert "".join(x["message"].get("thinking", "") for x in lines) == "let me see"
    assert "".join(x["message"]["content"] for x in lines) == "Checking "
    calls = [c for x in lines for c in x["message"].get("tool_calls", [])]
    assert calls == [
        {"id": "c1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}},
        {"id": "c2", "function": {"index": 1, "name": "time", "arguments": {}}},
    ]
    final = lines[-1]
    assert final["done_reason"] == "stop" and final["prompt_eval_count"] == 7
    assert final["eval_count"] == 4 and final["eval_duration"] == 20_000_000


@pytest.mark.parametrize("size", [1, 13, 100_000])
def test_stream_round_trip_keeps_content_reasoning_tools_finish_and_usage(size: int) -> None:
    there = to_openai.OpenAIToOllama("m", stream=True, generate=False)
    lines = b"".join(there.chunk(p) for p in _pieces(AWKWARD_STREAM, size)) + there.end()
    back = to_ollama.OllamaToOpenAI(
        "m", stream=True, completion=False, include_usage=True, ident=lambda p: f"{p}-1"
    )
    assert back.content_type(200, "application/x-ndjson") == "text/event-stream"
    sse = b"".join(back.chunk(p) for p in _pieces(lines, size)) + back.end()
    events = [e.removeprefix(b"data: ") for e in sse.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "Checking "
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "let me see"
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [
        (c["id"], c["index"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
        for c in calls
    ] == [("c1", 0, "weather", {"city": "Paris"}), ("c2", 1, "time", {})]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 4,
        "total_tokens": 11,
    }


def test_ollama_generate_stream_as_completion_chunks() -> None:
    lines = b"".join(
        orjson.dumps(x) + b"\n"
        for x in [
            {"model": "m", "response": "once", "done": False},
            {"model": "m", "response": "", "done": False},  # empty
            {"model": "m", "response": " upon", "done": False},
            {
                "model": "m",
                "response": "",
                "done": True,
                "done_reason": "length",
                "prompt_eval_count": 2,
                "eval_count": 2,
            },
        ]
    )
    t = to_ollama.OllamaToOpenAI("m", stream=True, completion=True)
    out = t.chunk(lines[:10]) + t.chunk(lines[10:]) + t.end()
    events = [e.removeprefix(b"data: ") for e in out.split(b"\n\n") if e]
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert events[-1] == b"[DONE]" and all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "once upon"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_box_error_mid_stream_ends_the_stream_in_the_clients_framing() -> None:
    ollama_side = to_openai.OpenAIToOllama("m", stream=True, generate=False)
    out = (
        ollama_side.chunk(
            _sse(_chunk({"content": "a"}), {"error": {"message": "oom", "code": 500}})
        )
        + ollama_side.end()
    )
    assert [orjson.loads(x) for x in out.splitlines()][-1] == {"error": "oom"}
    openai_side = to_ollama.OllamaToOpenAI("m", stream=True, completion=False)
    out = (
        openai_side.chunk(b'{"message":{"content":"a"},"done":false}\n{"error":"oom"}\n')
        + openai_side.end()
    )
    events = [e.removeprefix(b"data: ") for e in out.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]" and orjson.loads(events[-2])["error"]["message"] == "oom"


def test_a_stream_without_done_still_ends_properly() -> None:
    t = to_openai.OpenAIToOllama("m", stream=True, generate=True)
    out = t.chunk(_sse({"choices": [{"index": 0, "text": "hi", "finish_reason": None}]})) + t.end()
    lines = [orjson.loads(x) for x in out.splitlines()]
    assert lines[0]["response"] == "hi" and lines[-1]["done"] is True


# -- plans --------------------------------------------------------------------------------


def _box(kind: str, tags: list[dict[str, str]], openai_api: bool | None = None) -> BoxState:
    return BoxState(
        name="b",
        url="http://b",
        kind=kind,
        index=0,
        priority=0,
        slots=1,  # type: ignore[arg-type]
        tags=tuple(tags),
        openai_api=openai_api,
    )


CHAT_BODY = (
    b'{"model":"llama3.2", "messages":[{"role":"user","content":"hi"}],"n":2,"tool_choice":"auto"}'
)


@pytest.mark.parametrize(
    ("box", "path", "same"),
    [
        (
            _box(
                "ollama", [{"name": "llama3.2:latest", "model": "llama3.2:latest"}], openai_api=True
            ),
            "/v1/chat/completions",
            True,
        ),
        (
            _box("ollama", [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]),
            "/api/chat",
            False,
        ),
        (
            _box("llama-server", [{"name": "llama3.2", "model": "llama3.2"}]),
            "/v1/chat/completions",
            True,
        ),
        # llama-server takes its ids exactly: "llama3.2" is not "llama3.2:latest" there.
        (
            _box("openai", [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]),
            "/v1/chat/completions",
            False,
        ),
    ],
)
def test_openai_clients_get_bytes_through_where_the_box_speaks_openai(
    box: BoxState, path: str, same: bool
) -> None:
    doc = orjson.loads(CHAT_BODY)
    out = for_openai_client(
        "/v1/chat/completions", CHAT_BODY, doc, "llama3.2", "llama3.2:latest"
    ).plan(box)
    assert out.path == path
    assert (out.body == CHAT_BODY) is same
    assert (out.translator is None) is (path == "/v1/chat/completions")


def test_an_alias_changes_only_the_model_field() -> None:
    box = _box("llama-server", [{"name": "llama3.2", "model": "org/L-GGUF:Q4_K_M"}])
    doc = orjson.loads(CHAT_BODY)
    out = for_openai_client(
        "/v1/chat/completions", CHAT_BODY, doc, "llama3.2", "llama3.2:latest"
    ).plan(box)
    assert (
        orjson.loads(out.body) == {**doc, "model": "org/L-GGUF:Q4_K_M"} and out.translator is None
    )
    ollama_doc = {"model": "llama3.2", "messages": doc["messages"], "stream": False}
    body = orjson.dumps(ollama_doc)
    native = for_ollama_client("/api/chat", body, ollama_doc, "llama3.2", "llama3.2:latest").plan(
        box
    )
    assert native.path == "/v1/chat/completions"
    assert orjson.loads(native.body)["model"] == "org/L-GGUF:Q4_K_M"
    ollama_box = _box("ollama", [{"name": "llama3.2:latest", "model": "llama3.2:latest"}])
    same = for_ollama_client("/api/chat", body, ollama_doc, "llama3.2", "llama3.2:latest").plan(
        ollama_box
    )
    assert same.body == body and same.translator is None  # name and name:latest are one


def test_untranslatable_requests_are_kept_to_boxes_of_their_own_api() -> None:
    doc = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}
        ],
    }
    routed = for_openai_client("/v1/chat/completions", orjson.dumps(doc), doc, "m", "m:latest")

    def box(name: str, kind: str, openai_api: bool | None = None) -> BoxState:
        return BoxState(
            name=name,
            url=f"http://{name}",
            kind=kind,  # type: ignore[arg-type]
            index=0,
            priority=0,
            slots=1,
            health=Health.HEALTHY,
            models=frozenset({"m:latest"}),
            openai_api=openai_api,
        )

    # Only boxes that speak OpenAI's API have it: nothing to translate, any may serve.
    assert routed.check(Fleet.of((box("v", "openai"),)), "m:latest") is None
    # An Ollama box without /v1 has it too: the image URL cannot go there.
    mixed = Fleet.of((box("o", "ollama", openai_api=False), box("v", "openai")))
    assert routed.check(mixed, "m:latest") == frozenset({"llama-server", "openai"})
    # Only that Ollama box has it: refused up front, before a slot is taken.
    with pytest.raises(BadRequest, match="image"):
        routed.check(Fleet.of((box("o", "ollama", openai_api=False),)), "m:latest")
