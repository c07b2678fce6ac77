"""Answers for an Anthropic Messages client: a box's OpenAI chat completion (whole, or
streamed as server-sent chunks) as Anthropic's message, or its event stream:
``message_start``, then per content block ``content_block_start`` /
``content_block_delta`` (``thinking_delta``, ``text_delta``, ``input_json_delta``) /
``content_block_stop``, then ``message_delta`` (stop reason, usage) and ``message_stop``.

An Ollama box's native answer reaches these translators through ``OllamaToOpenAI``
first (``Chain``): one converter per direction, not one per pair of APIs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ollamux.backends.relay import Translator
from ollamux.backends.translate.common import (
    EVENT_STREAM,
    JSON,
    MALFORMED,
    Chain,
    SSEReader,
    WholeBody,
    arguments_object,
    convert_all,
    error_message,
    loads_object,
    untranslatable,
)
from ollamux.backends.translate.openai_client import OllamaToOpenAI
from ollamux.routing.errors import ProxyError

# OpenAI's finish_reason as Anthropic's stop_reason. Neither llama-server nor Ollama
# says which stop sequence matched, so a stop is an end_turn.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


NO_EDITS: dict[str, Any] = {"applied_edits": []}


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def stop_reason(finish: object, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_use"
    return _STOP_REASONS.get(str(finish), "end_turn")


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_doc(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def anthropic_error(status: int, body: bytes) -> bytes:
    """A box's error in Anthropic's shape (an Anthropic-shaped one passes through)."""
    doc = loads_object(body) if body.strip() else None
    if doc is not None and doc.get("type") == "error" and isinstance(doc.get("error"), dict):
        return body
    return orjson.dumps(error_doc(status, error_message(body)))


def error_event(status: int, message: str) -> bytes:
    return event("error", error_doc(status, message))


def event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# -- whole answers --------------------------------------------------------------------


def message_from_openai(
    doc: Mapping[str, Any], *, model: str, ident: str, edits: bool = False
) -> dict[str, Any]:
    """A whole OpenAI chat completion as an Anthropic message. ``edits``: the request
    asked for context management, which no box applies; the message says none was."""
    choices = doc.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thinking, str) and thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    for j, call in enumerate(calls):
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{ident[4:16]}_{j}",
                "name": function.get("name", ""),
                "input": _input(function.get("arguments")),
            }
        )
    out = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": usage(doc.get("usage")),
    }
    if edits:
        out["context_management"] = NO_EDITS
    return out


def usage(openai: object) -> dict[str, int]:
    got = openai if isinstance(openai, dict) else {}
    return {
        "input_tokens": int(got.get("prompt_tokens") or 0),
        "output_tokens": int(got.get("completion_tokens") or 0),
    }


def _input(arguments: object) -> Any:
    value = arguments_object(arguments, strict=False)
    return value if isinstance(value, dict) else {"arguments": value}


# -- translators ----------------------------------------------------------------------


class OpenAIToAnthropic:
    """A box's chat completion, whole or streamed, as Anthropic's answer."""

    def __init__(
        self,
        model: str,
        *,
        stream: bool,
        edits: bool = False,
        ident: Callable[[], str] = new_message_id,
    ) -> None:
        self._model = model
        self._stream = stream
        self._edits = edits
        self._id = ident()
        self._events = SSEReader()
        self._started = False
        self._finished = False
        self._block: tuple[str, int] | None = None  # the open block: (kind, index)
        self._blocks = 0
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._finish: object = None
        self._usage: object = None

    def limit_events(self, limit: int) -> None:
        self._events.limit = limit

    def content_type(self, status: int, upstream: str) -> str:
        return EVENT_STREAM if self._stream and status < 400 else JSON

    def chunk(self, data: bytes) -> bytes:
        return convert_all(self._events.feed(data), self._payload, self._malformed)

    def end(self) -> bytes:
        return convert_all(self._events.rest(), self._payload, self._malformed, self._close)

    def _malformed(self, exc: Exception) -> bytes:
        return self.broken(untranslatable(exc))

    def whole(self, status: int, body: bytes) -> bytes:
        doc = _answer(status, body)
        if isinstance(doc, bytes):
            return doc
        try:
            if self._stream:  # the box answered whole though asked to stream
                return self._replay(doc)
            message = message_from_openai(doc, model=self._model, ident=self._id, edits=self._edits)
            return orjson.dumps(message)
        except MALFORMED as exc:
            raise untranslatable(exc) from exc

    def broken(self, error: ProxyError) -> bytes:
        """A stream the box broke off ends with Anthropic's own ``error`` event."""
        if self._finished:
            return b""
        self._finished = True
        return error_event(error.status, error.message)

    def _replay(self, doc: Mapping[str, Any]) -> bytes:
        message = message_from_openai(doc, model=self._model, ident=self._id)
        out = self._start()
        for i, block in enumerate(message["content"]):
            out += event("content_block_start", _start_doc(i, _empty(block)))
            out += event("content_block_delta", _delta_doc(i, _whole_delta(block)))
            out += event("content_block_stop", {"type": "content_block_stop", "index": i})
        self._finished = True
        return out + _finale(message["stop_reason"], message["usage"], self._edits)

    def _payload(self, payload: str) -> bytes:
        if self._finished:
            return b""
        if payload.strip() == "[DONE]":
            return self._close()
        doc = loads_object(payload)
        if doc is None:
            return b""
        if doc.get("error") is not None:
            self._finished = True
            return self._start() + error_event(502, error_message(payload.encode()))
        out = self._start()
        self._usage = doc.get("usage") or self._usage
        choices = doc.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else None
        if choice is None:
            return out
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        delta = choice.get("delta") or {}
        thinking = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(thinking, str) and thinking:
            out += self._into("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += self._delta({"type": "thinking_delta", "thinking": thinking})
        if isinstance(delta.get("content"), str) and delta["content"]:
            out += self._into("text", {"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": delta["content"]})
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out += self._tool(call)
        return out

    def _tool(self, call: Mapping[str, Any]) -> bytes:
        index = call.get("index", len(self._tools))
        function = call.get("function") or {}
        out = b""
        if index not in self._tools:
            out += self._shut()
            block = self._blocks
            self._tools[index] = block
            self._blocks += 1
            self._block = ("tool_use", block)
            start: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{self._id[4:16]}_{index}",
                "name": function.get("name") or "",
                "input": {},
            }
            out += event("content_block_start", _start_doc(block, start))
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a box that sends an object, not JSON text
            arguments = orjson.dumps(arguments).decode()
        if isinstance(arguments, str) and arguments:
            piece = {"type": "input_json_delta", "partial_json": arguments}
            out += event("content_block_delta", _delta_doc(self._tools[index], piece))
        return out

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message})

    def _into(self, kind: str, start: dict[str, Any]) -> bytes:
        """Open a block of ``kind`` unless one is open already."""
        if self._block is not None and self._block[0] == kind:
            return b""
        out = self._shut()
        self._block = (kind, self._blocks)
        self._blocks += 1
        return out + event("content_block_start", _start_doc(self._block[1], start))

    def _delta(self, delta: dict[str, Any]) -> bytes:
        assert self._block is not None
        return event("content_block_delta", _delta_doc(self._block[1], delta))

    def _shut(self) -> bytes:
        if self._block is None:
            return b""
        index = self._block[1]
        self._block = None
        return event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _close(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        out = self._start() + self._shut()
        reason = stop_reason(self._finish, bool(self._tools))
        return out + _finale(reason, usage(self._usage), self._edits)


def _start_doc(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta_doc(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _empty(block: Mapping[str, Any]) -> dict[str, Any]:
    """A block as its content_block_start shows it: its content comes in deltas."""
    if block["type"] == "text":
        return {"type": "text", "text": ""}
    if block["type"] == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    return {**block, "input": {}}


def _whole_delta(block: Mapping[str, Any]) -> dict[str, Any]:
    if block["type"] == "text":
        return {"type": "text_delta", "text": block["text"]}
    if block["type"] == "thinking":
        return {"type": "thinking_delta", "thinking": block["thinking"]}
    return {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}


def _finale(reason: str, counts: Mapping[str, int], edits: bool) -> bytes:
    delta = {"stop_reason": reason, "stop_sequence": None}
    data: dict[str, Any] = {"type": "message_delta", "delta": delta, "usage": counts}
    if edits:
        data["context_management"] = NO_EDITS
    out = event("message_delta", data)
    return out + event("message_stop", {"type": "message_stop"})


class CountFromOpenAI(WholeBody):
    """A one-token chat completion, as ``count_tokens``'s answer: its prompt's size."""

    def whole(self, status: int, body: bytes) -> bytes:
        doc = _answer(status, body)
        if isinstance(doc, bytes):
            return doc
        try:
            return orjson.dumps({"input_tokens": usage(doc.get("usage"))["input_tokens"]})
        except MALFORMED as exc:
            raise untranslatable(exc) from exc


class AnthropicErrors:
    """For a box that speaks Messages itself: its answers pass through byte for byte
    (streams are never parsed); only an error read whole takes Anthropic's shape, for a
    box (llama-server) whose errors are OpenAI's."""

    def limit_events(self, limit: int) -> None:
        pass  # nothing is buffered

    def content_type(self, status: int, upstream: str) -> str:
        return upstream if status < 400 else JSON

    def chunk(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""

    def whole(self, status: int, body: bytes) -> bytes:
        return body if status < 400 else anthropic_error(status, body)

    def broken(self, error: ProxyError) -> bytes:
        """A stream the box broke off ends with Anthropic's own ``error`` event."""
        return error_event(error.status, error.message)


def from_ollama(model: str, *, stream: bool, count: bool = False, edits: bool = False) -> Chain:
    """An Ollama ``/api/chat`` answer as Anthropic's (or as a token count)."""
    first = OllamaToOpenAI(model, stream=stream, completion=False, include_usage=True)
    second: Translator = (
        CountFromOpenAI() if count else OpenAIToAnthropic(model, stream=stream, edits=edits)
    )
    return Chain(first, second)


def _answer(status: int, body: bytes) -> dict[str, Any] | bytes:
    """The box's whole answer as a JSON object, or the Anthropic error to send instead
    (the box's own error, or a 502 for an answer that is not a JSON object)."""
    if status >= 400:
        return anthropic_error(status, body)
    doc = loads_object(body)
    return orjson.dumps(error_doc(502, error_message(body))) if doc is None else doc
