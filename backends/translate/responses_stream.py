"""A chat completion's answer as the Responses API's: whole, or as its server-sent events.

The events follow OpenAI's Responses streaming (and Ollama's own ``/v1/responses``):
``response.created`` and ``response.in_progress``; per output item
``response.output_item.added``, then for a message ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``; for reasoning the ``response.reasoning_summary_*``
twins; for a function call ``response.function_call_arguments.delta``... and ``.done``
(for a custom tool's call ``response.custom_tool_call_input.delta`` and ``.done``, once
its input is whole);
each item closes with ``response.output_item.done``, and the stream with
``response.completed`` (``response.incomplete`` when cut at ``max_output_tokens``), whose
response carries the output and usage. Every event has a ``sequence_number``. A stream
that breaks ends with an ``error`` event and nothing after it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ollamux.backends.translate import responses_answer as rsp
from ollamux.backends.translate.common import (
    EVENT_STREAM,
    JSON,
    MALFORMED,
    SSEReader,
    convert_all,
    error_message,
    loads_object,
    openai_error,
    untranslatable,
)
from ollamux.backends.translate.responses import custom_names
from ollamux.routing.errors import ProxyError

_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(error: ProxyError, sequence: int) -> bytes:
    payload = {
        "type": "error",
        "code": error.code,
        "message": error.message,
        "param": None,
        "sequence_number": sequence,
    }
    return event("error", payload)


def stream_broken(error: ProxyError, tail: bytes) -> bytes:
    """The last event of a Responses stream the box broke off, relayed bytes through:
    numbered after the last event the client got."""
    numbers = _SEQUENCE.findall(tail)
    return error_event(error, int(numbers[-1]) + 1 if numbers else 0)


class _Item:
    """One output item being streamed."""

    def __init__(self, index: int, item: dict[str, Any]) -> None:
        self.index = index
        self.item = item
        self.text = ""


class ChatToResponses:
    """The relay's translator from a chat completion (whole, or SSE chunks) to the
    Responses API."""

    def __init__(
        self,
        request: Mapping[str, Any],
        *,
        stream: bool,
        ids: tuple[str, str] | None = None,
    ) -> None:
        self._request = request
        self._stream = stream
        self._id, self._stem = ids or rsp.new_ids()
        self._created = int(time.time())
        self._events = SSEReader()
        self._seq = 0
        self._started = False
        self._finished = False
        self._output: list[dict[str, Any]] = []  # items done, in output order
        self._reasoning: _Item | None = None
        self._message: _Item | None = None
        self._calls: dict[int, _Item] = {}  # open function calls by their chat index
        self._custom = custom_names(request.get("tools"))
        self._next = 0  # the next output index
        self._finish: str | None = None
        self._usage: Any = None

    @property
    def streaming(self) -> bool:
        return self._stream

    # -- the relay's Translator -------------------------------------------------------

    def limit_events(self, limit: int) -> None:
        self._events.limit = limit

    def content_type(self, status: int, upstream: str) -> str:
        return EVENT_STREAM if self._stream and status < 400 else JSON

    def chunk(self, data: bytes) -> bytes:
        return convert_all(self._events.feed(data), self._data, self._malformed)

    def end(self) -> bytes:
        return convert_all(self._events.rest(), self._data, self._malformed, self._complete)

    def _malformed(self, exc: Exception) -> bytes:
        return self.broken(untranslatable(exc))

    def whole(self, status: int, body: bytes) -> bytes:
        if status >= 400:
            return openai_error(status, body)
        completion = loads_object(body)
        if completion is None:
            return openai_error(502, body)
        try:
            return self._whole(completion)
        except MALFORMED as exc:
            raise untranslatable(exc) from exc

    def _whole(self, completion: Mapping[str, Any]) -> bytes:
        if not self._stream:
            answer = rsp.response_object(completion, self._request, self._id, self._stem)
            return orjson.dumps(answer)
        # Asked to stream, the box answered whole: its answer as one delta.
        choices = completion.get("choices") or [{}]
        message = choices[0].get("message") or {}
        delta = dict(message)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            delta["tool_calls"] = [{**c, "index": j} for j, c in enumerate(calls)]
        choice = {"delta": delta, "finish_reason": choices[0].get("finish_reason")}
        chunk: dict[str, Any] = {"choices": [choice], "usage": completion.get("usage")}
        return self._chunk(chunk) + self._complete()

    def broken(self, error: ProxyError) -> bytes:
        """The box's stream broke: an ``error`` event ends it."""
        if self._finished:
            return b""
        self._finished = True
        return self._begin() + error_event(error, self._take())

    # -- parsing ----------------------------------------------------------------------

    def _data(self, data: str) -> bytes:
        if self._finished or data.strip() == "[DONE]":
            return b""
        chunk = loads_object(data)
        if chunk is None:
            return b""
        if chunk.get("error") is not None:
            message = error_message(data.encode())
            self._finished = True
            payload: dict[str, Any] = {"type": "error", "code": "upstream_error"}
            payload.update(message=message, param=None, sequence_number=self._take())
            return self._begin() + event("error", payload)
        return self._chunk(chunk)

    def _chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = self._begin()
        if isinstance(chunk.get("usage"), dict):
            self._usage = rsp.usage(chunk["usage"])
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return out
        choice = choices[0]
        delta = choice.get("delta") or {}
        thinking = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(thinking, str) and thinking:
            out += self._think(thinking)
        if isinstance(delta.get("content"), str) and delta["content"]:
            out += self._say(delta["content"])
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                out += self._call(call)
        if choice.get("finish_reason"):
            self._finish = str(choice["finish_reason"])
        return out

    # -- events -----------------------------------------------------------------------

    def _take(self) -> int:
        n, self._seq = self._seq, self._seq + 1
        return n

    def _emit(self, kind: str, **data: Any) -> bytes:
        return event(kind, {"type": kind, **data, "sequence_number": self._take()})

    def _response(self, status: str) -> dict[str, Any]:
        return rsp.envelope(self._request, self._id, self._created, status=status, output=[])

    def _begin(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._emit("response.created", response=self._response("in_progress")) + (
            self._emit("response.in_progress", response=self._response("in_progress"))
        )

    def _open(self, item: dict[str, Any]) -> tuple[_Item, bytes]:
        opened = _Item(self._next, item)
        self._next += 1
        return opened, self._emit(
            "response.output_item.added", output_index=opened.index, item=item
        )

    def _think(self, text: str) -> bytes:
        out = b""
        if self._reasoning is None:
            item = {"id": f"rs_{self._stem}", "type": "reasoning", "summary": []}
            self._reasoning, out = self._open(item)
            out += self._emit(
                "response.reasoning_summary_part.added",
                item_id=item["id"],
                output_index=self._reasoning.index,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        r = self._reasoning
        r.text += text
        return out + self._emit(
            "response.reasoning_summary_text.delta",
            item_id=r.item["id"],
            output_index=r.index,
            summary_index=0,
            delta=text,
        )

    def _close_reasoning(self) -> bytes:
        r, self._reasoning = self._reasoning, None
        if r is None:
            return b""
        part = {"type": "summary_text", "text": r.text}
        common = {"item_id": r.item["id"], "output_index": r.index, "summary_index": 0}
        done = rsp.reasoning_item(self._stem, r.text)
        self._output.append(done)
        return (
            self._emit("response.reasoning_summary_text.done", **common, text=r.text)
            + self._emit("response.reasoning_summary_part.done", **common, part=part)
            + self._emit("response.output_item.done", output_index=r.index, item=done)
        )

    def _say(self, text: str) -> bytes:
        out = self._close_reasoning() if self._reasoning is not None else b""
        if self._message is None:
            item = rsp.message_item(self._stem, "", "in_progress")
            item["content"] = []
            self._message, added = self._open(item)
            out += added + self._emit(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self._message.index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            )
        m = self._message
        m.text += text
        return out + self._emit(
            "response.output_text.delta",
            item_id=m.item["id"],
            output_index=m.index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _close_message(self) -> bytes:
        m, self._message = self._message, None
        if m is None:
            return b""
        done = rsp.message_item(self._stem, m.text)
        self._output.append(done)
        common = {"item_id": done["id"], "output_index": m.index, "content_index": 0}
        return (
            self._emit("response.output_text.done", **common, text=m.text, logprobs=[])
            + self._emit("response.content_part.done", **common, part=done["content"][0])
            + self._emit("response.output_item.done", output_index=m.index, item=done)
        )

    def _call(self, call: Mapping[str, Any]) -> bytes:
        given = call.get("index")
        index = given if isinstance(given, int) else len(self._calls)
        function = call.get("function") or {}
        out = b""
        c = self._calls.get(index)
        if c is None:
            out += self._close_reasoning() + self._close_message()
            for other in list(self._calls):
                out += self._close_call(other)
            whole = {**call, "function": {**function, "arguments": ""}}
            item = rsp.call_item(self._stem, index, whole, "in_progress", self._custom)
            c, added = self._open(item)
            self._calls[index] = c
            out += added
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a box that sends an object rather than text
            arguments = orjson.dumps(arguments).decode()
        if isinstance(arguments, str) and arguments:
            c.text += arguments
            if c.item["type"] == "custom_tool_call":
                return out  # its raw input is known once its arguments are whole
            out += self._emit(
                "response.function_call_arguments.delta",
                item_id=c.item["id"],
                output_index=c.index,
                delta=arguments,
            )
        return out

    def _close_call(self, index: int) -> bytes:
        c = self._calls.pop(index, None)
        if c is None:
            return b""
        if c.item["type"] == "custom_tool_call":
            return self._close_custom(c)
        done = {**c.item, "status": "completed", "arguments": c.text}
        self._output.append(done)
        return self._emit(
            "response.function_call_arguments.done",
            item_id=done["id"],
            output_index=c.index,
            arguments=c.text,
        ) + self._emit("response.output_item.done", output_index=c.index, item=done)

    def _close_custom(self, c: _Item) -> bytes:
        text = rsp.custom_input(c.text)
        done = {**c.item, "status": "completed", "input": text}
        self._output.append(done)
        ref = {"item_id": done["id"], "output_index": c.index}
        return (
            self._emit("response.custom_tool_call_input.delta", **ref, delta=text)
            + self._emit("response.custom_tool_call_input.done", **ref, input=text)
            + self._emit("response.output_item.done", output_index=c.index, item=done)
        )

    def _complete(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        out = self._begin() + self._close_reasoning() + self._close_message()
        for index in list(self._calls):
            out += self._close_call(index)
        status = rsp.status_of(self._finish)
        response = rsp.envelope(
            self._request,
            self._id,
            self._created,
            status=status,
            output=self._output,  # items close in the order they opened
            usage=self._usage,
            finish=self._finish,
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._emit(kind, response=response)
