"""The Responses API <-> chat completions converters, as tables: each request field and
what the chat request carries for it, what cannot be carried (a 400 naming the field),
answers whole and streamed (the two must agree), and round trips."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ollamux.backends.translate import openai_client as to_ollama
from ollamux.backends.translate.responses import chat_request
from ollamux.backends.translate.responses_answer import response_object
from ollamux.backends.translate.responses_plan import Chained, serves_responses
from ollamux.backends.translate.responses_stream import ChatToResponses, stream_broken
from ollamux.routing.accounting import read_counts
from ollamux.routing.errors import BadRequest, UpstreamError
from ollamux.routing.state import BoxState, version_key

M = "m:1b"
TOOL = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
CHAT_TOOL = {
    "type": "function",
    "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
}
IMAGE = "data:image/png;base64,iVBORw0KGgo="

# (Responses request fields, chat request fields they become, for a chat box)
REQUESTS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"input": "hi"}, {"messages": [{"role": "user", "content": "hi"}], "stream": False}),
    (
        {"instructions": "be brief", "input": "hi"},
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ]
        },
    ),
    (
        {"input": [{"role": "developer", "content": [{"type": "input_text", "text": "x"}]}]},
        {"messages": [{"role": "developer", "content": "x"}]},
    ),
    (
        {
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this"},
                        {"type": "input_image", "image_url": IMAGE, "detail": "low"},
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
                    ],
                }
            ]
        },
    ),
    (
        {
            "input": [
                {"role": "user", "content": "weather?"},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
                {"role": "assistant", "content": [{"type": "output_text", "text": "mixed"}]},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": "rain"},
                {"role": "assistant", "content": "mixed"},
            ]
        },
    ),
    ({"input": "x", "tools": [TOOL]}, {"tools": [CHAT_TOOL]}),
    ({"input": "x", "tools": [TOOL], "tool_choice": "required"}, {"tool_choice": "required"}),
    (
        {"input": "x", "tools": [TOOL], "tool_choice": {"type": "function", "name": "f"}},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
    ),
    (
        {"input": "x", "reasoning": {"effort": "high", "summary": "auto"}},
        {"reasoning_effort": "high"},
    ),
    ({"input": "x", "max_output_tokens": 9}, {"max_tokens": 9}),
    ({"input": "x", "temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
    ({"input": "x", "top_k": 20, "seed": 7}, {"top_k": 20, "seed": 7}),  # passed on as they came
    (
        {
            "input": "x",
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "n",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": True},
            }
        },
    ),
    (
        {"input": "x", "text": {"format": {"type": "json_object"}}},
        {"response_format": {"type": "json_object"}},
    ),
    ({"input": "x", "stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
    (
        {"input": "x", "store": True, "metadata": {"k": "v"}, "truncation": "auto"},
        {"stream": False},
    ),
]


@pytest.mark.parametrize(("fields", "expected"), REQUESTS)
def test_request_fields_become_chat_fields(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    chat = chat_request({"model": M, **fields})
    assert chat["model"] == M
    assert {k: chat.get(k) for k in expected} == expected
    for gone in ("input", "instructions", "store", "metadata", "truncation", "max_output_tokens"):
        assert gone not in chat


# (request fields, the field the 400 names), on any box without the Responses API
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        "input[0].content[0].type",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        "input[0].content[0].image_url",
    ),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": "x", "top_logprobs": 3}, "top_logprobs"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": 5}, "input"),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED)
def test_what_cannot_be_carried_is_a_400_naming_the_field(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        chat_request({"model": M, **fields})
    assert caught.value.param == param


def test_an_ollama_box_has_no_tool_choice_and_four_think_levels() -> None:
    none = chat_request(
        {"model": M, "input": "x", "tools": [TOOL], "tool_choice": "none"}, ollama=True
    )
    assert "tools" not in none and "tool_choice" not in none  # offered none, it calls none
    auto = chat_request(
        {"model": M, "input": "x", "tools": [TOOL], "tool_choice": "auto"}, ollama=True
    )
    assert auto["tools"] == [CHAT_TOOL] and "tool_choice" not in auto
    for refused in ("required", {"type": "function", "name": "f"}):
        with pytest.raises(BadRequest) as caught:
            chat_request(
                {"model": M, "input": "x", "tools": [TOOL], "tool_choice": refused}, ollama=True
            )
        assert caught.value.param == "tool_choice"
    with pytest.raises(BadRequest):
        chat_request({"model": M, "input": "x", "reasoning": {"effort": "minimal"}}, ollama=True)
    native = to_ollama.chat_request(
        chat_request({"model": M, "input": "x", "reasoning": {"effort": "none"}}, ollama=True)
    )
    assert native["think"] is False


COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": M,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look.",
                "reasoning_content": "they want weather",
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}


def test_a_whole_answer_becomes_output_items() -> None:
    request = {"model": M, "input": "x", "instructions": "i", "tools": [TOOL]}
    answer = response_object(COMPLETION, request, "resp_1", "s")
    assert [i["type"] for i in answer["output"]] == ["reasoning", "message", "function_call"]
    assert answer["output"][0]["summary"] == [{"type": "summary_text", "text": "they want weather"}]
    assert answer["output"][1]["content"][0]["text"] == "Let me look."
    call = answer["output"][2]
    assert (call["call_id"], call["name"], call["arguments"]) == ("call_9", "f", '{"city":"Paris"}')
    assert answer["status"] == "completed" and answer["incomplete_details"] is None
    assert answer["usage"]["input_tokens"] == 11 and answer["usage"]["output_tokens"] == 7
    assert answer["usage"]["total_tokens"] == 18
    assert (answer["instructions"], answer["tools"], answer["store"]) == ("i", [TOOL], False)
    cut = {**COMPLETION, "choices": [{"message": {"content": "ab"}, "finish_reason": "length"}]}
    incomplete = response_object(cut, request, "resp_2", "s")
    assert incomplete["status"] == "incomplete"
    assert incomplete["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_function_call_round_trips() -> None:
    """An answer's function call, sent back as input, is the chat's tool call again."""
    answer = response_object(COMPLETION, {"model": M}, "resp_1", "s")
    call = answer["output"][2]
    sent_back = {"type": "function_call", **{k: call[k] for k in ("call_id", "name", "arguments")}}
    chat = chat_request({"model": M, "input": [sent_back]})
    original = COMPLETION["choices"][0]["message"]["tool_calls"]  # type: ignore[index]
    assert chat["messages"][0]["tool_calls"] == original


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"delta": {"role": "assistant", "reasoning_content": "they want "}}]},
    {"choices": [{"delta": {"reasoning_content": "weather"}}]},
    {"choices": [{"delta": {"content": "Let "}}]},
    {"choices": [{"delta": {"content": "me look."}}]},
    {
        "choices": [
            {
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                }
            }
        ]
    },
    {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
    {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}},
]


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            name, data = block.split("\n")
            event = orjson.loads(data.removeprefix("data: "))
            assert name == "event: " + event["type"]
            out.append(event)
    return out


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_a_stream_in_any_pieces_agrees_with_the_whole_answer(piece: int) -> None:
    request = {"model": M, "input": "x", "tools": [TOOL], "stream": True}
    translator = ChatToResponses(request, stream=True, ids=("resp_1", "s"))
    raw = _sse(CHUNKS)
    out = b"".join(translator.chunk(raw[i : i + piece]) for i in range(0, len(raw), piece))
    events = _events(out + translator.end())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    streamed = events[-1]["response"]
    whole = response_object(COMPLETION, request, "resp_1", "s")
    assert streamed["output"] == whole["output"]
    assert streamed["usage"] == whole["usage"]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [
        0,
        1,
        2,
    ]


def test_a_box_error_in_the_stream_ends_it_with_an_error_event() -> None:
    translator = ChatToResponses({"model": M}, stream=True)
    raw = _sse(CHUNKS[2:3]).replace(b"data: [DONE]\n\n", b"")
    raw += b'data: {"error": {"message": "model crashed", "type": "api_error"}}\n\n'
    events = _events(translator.chunk(raw) + translator.chunk(_sse(CHUNKS[3:4])) + translator.end())
    assert events[-1]["type"] == "error" and events[-1]["message"] == "model crashed"
    assert "response.completed" not in [e["type"] for e in events]


def test_a_broken_stream_ends_with_an_error_event_numbered_next() -> None:
    translator = ChatToResponses({"model": M}, stream=True)
    head = _events(translator.chunk(_sse(CHUNKS[2:3]).replace(b"data: [DONE]\n\n", b"")))
    broken = _events(translator.broken(UpstreamError("box gpu-a broke the stream", box="gpu-a")))
    assert broken[0]["type"] == "error" and broken[0]["sequence_number"] == len(head)
    assert translator.end() == b""  # nothing after the error
    relayed = b'event: response.output_text.delta\ndata: {"type":"x","sequence_number":41}\n\n'
    tail = _events(stream_broken(UpstreamError("cut", box="b"), relayed))
    assert tail == [
        {
            "type": "error",
            "code": "upstream_error",
            "message": "cut",
            "param": None,
            "sequence_number": 42,
        }
    ]


def test_an_ollama_stream_reaches_a_responses_client() -> None:
    request = {"model": M, "input": "x", "stream": True}
    lines = [
        {"model": M, "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": M, "message": {"role": "assistant", "content": "lo"}, "done": False},
        {
            "model": M,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": 2,
        },
    ]
    chat = to_ollama.OllamaToOpenAI(M, stream=True, completion=False, include_usage=True)
    chained = Chained(chat, ChatToResponses(request, stream=True))
    raw = b"".join(chained.chunk(orjson.dumps(line) + b"\n") for line in lines) + chained.end()
    events = _events(raw)
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 2
    counts = read_counts(raw[-8192:])  # what accounting reads from the relay's tail
    assert (counts.prompt_tokens, counts.output_tokens) == (5, 2)


def test_versions_compare_as_numbers() -> None:
    assert version_key("0.13.3") >= (0, 13, 3) > version_key("0.12.10")
    assert version_key("v0.14.0-rc1") == (0, 14, 0)


@pytest.mark.parametrize(
    ("kind", "version", "lacking", "serves"),
    [
        ("ollama", "0.13.3", frozenset(), True),
        ("ollama", "0.20.1", frozenset(), True),
        ("ollama", "0.12.6", frozenset(), False),
        ("ollama", "0.0.0", frozenset(), None),  # built from source: tried
        ("ollama", None, frozenset(), None),
        ("llama-server", "b6500", frozenset(), None),  # learned from a 404
        ("llama-server", "b6500", frozenset({"/v1/responses"}), False),
        ("openai", None, frozenset(), None),
    ],
)
def test_which_boxes_get_the_bytes(
    kind: Any, version: str | None, lacking: frozenset[str], serves: bool | None
) -> None:
    box = BoxState("b", "http://b", kind, 0, 0, 2, version=version, lacking=lacking)
    assert serves_responses(box) is serves


PATCH_TOOL = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/s"},
}
PATCH = '*** Begin Patch\n*** Add File: a.txt\n+hi "there"\n*** End Patch'


def test_a_custom_tool_is_a_function_of_its_raw_input() -> None:
    chat = chat_request({"model": M, "input": "x", "tools": [PATCH_TOOL]})
    function = chat["tools"][0]["function"]
    assert function["name"] == "apply_patch"
    assert function["parameters"]["required"] == ["input"]
    assert "Edit files." in function["description"] and "start: /.+/s" in function["description"]
    history = chat_request(
        {
            "model": M,
            "input": [
                {
                    "type": "custom_tool_call",
                    "call_id": "c1",
                    "name": "apply_patch",
                    "input": PATCH,
                },
                {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"},
            ],
        }
    )
    call = history["messages"][0]["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {"input": PATCH}
    assert history["messages"][1] == {"role": "tool", "tool_call_id": "c1", "content": "Done!"}


def _patch_call(arguments: str) -> dict[str, Any]:
    return {
        "id": "call_p",
        "type": "function",
        "function": {"name": "apply_patch", "arguments": arguments},
    }


def test_a_custom_tools_call_comes_back_with_its_raw_input() -> None:
    request = {"model": M, "input": "x", "tools": [PATCH_TOOL, TOOL]}
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            _patch_call(orjson.dumps({"input": PATCH}).decode()),
            {"id": "call_f", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        ],
    }
    completion = {"choices": [{"message": message, "finish_reason": "tool_calls"}]}
    output = response_object(completion, request, "resp_1", "s")["output"]
    assert [(o["type"], o["name"]) for o in output] == [
        ("custom_tool_call", "apply_patch"),
        ("function_call", "f"),
    ]
    assert output[0]["input"] == PATCH and output[0]["call_id"] == "call_p"

    translator = ChatToResponses({**request, "stream": True}, stream=True, ids=("resp_1", "s"))
    args = orjson.dumps({"input": PATCH}).decode()
    chunks = [
        {"choices": [{"delta": {"tool_calls": [{"index": 0, **_patch_call(args[:10])}]}}]},
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": args[10:]}}]}}
            ]
        },
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]
    events = _events(translator.chunk(_sse(chunks)) + translator.end())
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" not in kinds
    done = next(e for e in events if e["type"] == "response.custom_tool_call_input.done")
    assert done["input"] == PATCH
    assert events[-1]["response"]["output"][0]["input"] == PATCH
