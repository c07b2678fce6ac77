"""The simulated Ollama box's ``/v1/responses``, as Ollama documents and builds it (since
0.13.3): stateless, the request turned into a chat and answered by the box's own
``/api/chat``, the answer turned back into a ``response`` object or the Responses
server-sent events (``event: <type>`` / ``data: <json>``, each with a
``sequence_number``). A box whose ``version`` is older answers 404 like Ollama's router
("404 page not found", plain text).

Written apart from ollamux's own translator (``backends.translate``), which tests put
against it: the two must agree only where Ollama's behaviour says so.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ollamux.backends.sim.http import ApiError, read_object

SINCE = (0, 13, 3)


def version_at_least(version: str, since: tuple[int, ...]) -> bool:
    parts = version.removeprefix("v").split("-")[0].split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in parts) >= since


def error(status: int, message: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "api_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def chat_of(req: dict[str, Any]) -> dict[str, Any]:
    """Ollama's FromResponsesRequest: instructions first, then the input's items."""
    messages: list[dict[str, Any]] = []
    if isinstance(req.get("instructions"), str) and req["instructions"]:
        messages.append({"role": "system", "content": req["instructions"]})
    items = req.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for i, item in enumerate(items):
            messages += _item(item, i, messages)
    elif items is not None:
        raise ApiError(400, "input must be a string or array")
    options: dict[str, Any] = {"temperature": req.get("temperature", 1.0)}
    if req.get("top_p") is not None:
        options["top_p"] = req["top_p"]
    if req.get("max_output_tokens") is not None:
        options["num_predict"] = req["max_output_tokens"]
    chat: dict[str, Any] = {"model": req.get("model"), "messages": messages, "options": options}
    effort = (req.get("reasoning") or {}).get("effort")
    if effort:
        chat["think"] = effort != "none" and effort
    tools = [_tool(t) for t in req.get("tools") or []]
    if tools:
        chat["tools"] = tools
    fmt = (req.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema" and fmt.get("schema"):
        chat["format"] = fmt["schema"]
    return chat


def _item(item: Any, i: int, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not isinstance(item, dict):
        raise ApiError(400, f"input[{i}]: not an object")
    kind = item.get("type") or ("message" if item.get("role") else "")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        return [{"role": item.get("role"), "content": content or ""}]
    if kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "function": {"name": item.get("name"), "arguments": orjson.loads(item["arguments"])},
        }
        if messages and messages[-1]["role"] == "assistant":
            messages[-1].setdefault("tool_calls", []).append(call)
            return []
        return [{"role": "assistant", "content": "", "tool_calls": [call]}]
    if kind == "function_call_output":
        return [
            {"role": "tool", "content": item.get("output"), "tool_call_id": item.get("call_id")}
        ]
    if kind == "reasoning":
        return []
    raise ApiError(400, f"input[{i}]: unknown input item type: {kind!r}")


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {k: tool.get(k) for k in ("name", "description", "parameters")}
    return {"type": tool.get("type", "function"), "function": function}


def _calls(message: dict[str, Any], stem: str) -> list[dict[str, Any]]:
    out = []
    for j, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        out.append(
            {
                "id": f"fc_{stem}_{j}",
                "type": "function_call",
                "status": "completed",
                "call_id": call.get("id") or f"call_{stem}_{j}",
                "name": fn.get("name", ""),
                "arguments": orjson.dumps(fn.get("arguments") or {}).decode(),
            }
        )
    return out


def _reasoning_item(stem: str, text: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}]
    return {"id": f"rs_{stem}", "type": "reasoning", "summary": summary, "encrypted_content": text}


def _text_item(ident: str, text: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": ident,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }


def _usage(final: dict[str, Any]) -> dict[str, Any]:
    prompt, output = final.get("prompt_eval_count", 0), final.get("eval_count", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }


def _response(req: dict[str, Any], ident: str, status: str, output: list[Any], usage: Any) -> Any:
    return {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": req.get("model"),
        "output": output,
        "tools": req.get("tools") or [],
        "store": False,
        "usage": usage,
    }


class Handler:
    """``POST /v1/responses`` for one simulated box; ``chat_url`` is its own ``/api/chat``."""

    def __init__(self, version: Callable[[], str], chat_url: Callable[[], str]) -> None:
        self._version = version
        self._chat_url = chat_url
        self.last_stream = b""  # the bytes of the last stream sent (tests compare them)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not version_at_least(self._version(), SINCE):
            return web.Response(status=404, text="404 page not found")
        try:
            req = await read_object(request)
            chat = chat_of(req)
        except (ApiError, orjson.JSONDecodeError) as exc:
            return error(400, getattr(exc, "message", str(exc)))
        stream = req.get("stream") is True
        chat["stream"] = stream
        stem = str(random.randint(0, 999999))
        async with (
            aiohttp.ClientSession() as session,
            session.post(self._chat_url(), data=orjson.dumps(chat)) as answer,
        ):
            if answer.status != 200:
                doc = orjson.loads(await answer.read())
                return error(answer.status, str(doc.get("error")))
            if not stream:
                final = orjson.loads(await answer.read())
                message = final.get("message") or {}
                calls = _calls(message, stem)
                output = calls or [_text_item(f"msg_{stem}", message.get("content", ""))]
                if message.get("thinking"):
                    output.insert(0, _reasoning_item(stem, message["thinking"]))
                body = _response(req, f"resp_{stem}", "completed", output, _usage(final))
                return web.Response(body=orjson.dumps(body), content_type="application/json")
            return await self._stream(request, answer, req, stem)

    async def _stream(
        self, request: web.Request, answer: aiohttp.ClientResponse, req: dict[str, Any], stem: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = _Events(req, stem)
        self.last_stream = b""
        try:
            async for line in answer.content:
                if line.strip():
                    for chunk in events.process(orjson.loads(line)):
                        self.last_stream += chunk
                        await resp.write(chunk)
        except aiohttp.ClientPayloadError:
            if request.transport is not None:  # its own chat broke off: so does this stream
                request.transport.abort()
        return resp


class _Events:
    """Ollama's ResponsesStreamConverter, in short: reasoning (a summary), then text or
    function calls, then done."""

    def __init__(self, req: dict[str, Any], stem: str) -> None:
        self._req = req
        self._stem = stem
        self._seq = itertools.count()
        self._started = False
        self._index = 0  # the next item's output_index
        self._thinking: str | None = None
        self._reasoning: dict[str, Any] | None = None  # the reasoning item, once done
        self._text: str | None = None
        self._calls: list[dict[str, Any]] = []

    def _event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, **data, "sequence_number": next(self._seq)}
        return f"event: {kind}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"

    def process(self, line: dict[str, Any]) -> list[bytes]:
        out = []
        ident = f"resp_{self._stem}"
        if not self._started:
            self._started = True
            skeleton = _response(self._req, ident, "in_progress", [], None)
            out += [
                self._event("response.created", response=skeleton),
                self._event("response.in_progress", response=skeleton),
            ]
        message = line.get("message") or {}
        if message.get("thinking"):
            out += self._think(message["thinking"])
        calls = _calls(message, self._stem)
        if calls or message.get("content") or line.get("done"):
            out += self._end_thinking()
        for j, call in enumerate(calls, start=self._index):
            added = {**call, "status": "in_progress", "arguments": ""}
            ref = {"item_id": call["id"], "output_index": j}
            arguments = call["arguments"]
            out += [
                self._event("response.output_item.added", output_index=j, item=added),
                self._event("response.function_call_arguments.delta", **ref, delta=arguments),
                self._event("response.function_call_arguments.done", **ref, arguments=arguments),
                self._event("response.output_item.done", output_index=j, item=call),
            ]
        self._calls += calls
        content = message.get("content") or ""
        item = f"msg_{self._stem}"
        ref = {"item_id": item, "output_index": self._index, "content_index": 0}
        if content and not self._calls:
            if self._text is None:
                self._text = ""
                started = {**_text_item(item, ""), "status": "in_progress", "content": []}
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out += [
                    self._event(
                        "response.output_item.added", output_index=self._index, item=started
                    ),
                    self._event("response.content_part.added", **ref, part=part),
                ]
            self._text += content
            out.append(self._event("response.output_text.delta", **ref, delta=content, logprobs=[]))
        if not line.get("done"):
            return out
        output: list[Any] = [self._reasoning] if self._reasoning else []
        output += self._calls
        if self._text is not None and not self._calls:
            done = _text_item(item, self._text)
            out += [
                self._event("response.output_text.done", **ref, text=self._text, logprobs=[]),
                self._event("response.content_part.done", **ref, part=done["content"][0]),
                self._event("response.output_item.done", output_index=self._index, item=done),
            ]
            output.append(done)
        final = _response(self._req, ident, "completed", output, _usage(line))
        out.append(self._event("response.completed", response=final))
        return out

    def _think(self, text: str) -> list[bytes]:
        out = []
        ref = {"item_id": f"rs_{self._stem}", "output_index": self._index, "summary_index": 0}
        if self._thinking is None:
            self._thinking = ""
            item = {"id": ref["item_id"], "type": "reasoning", "summary": []}
            out.append(
                self._event("response.output_item.added", output_index=self._index, item=item)
            )
        self._thinking += text
        out.append(self._event("response.reasoning_summary_text.delta", **ref, delta=text))
        return out

    def _end_thinking(self) -> list[bytes]:
        if self._thinking is None or self._reasoning is not None:
            return []
        ref = {"item_id": f"rs_{self._stem}", "output_index": self._index, "summary_index": 0}
        self._reasoning = _reasoning_item(self._stem, self._thinking)
        out = [
            self._event("response.reasoning_summary_text.done", **ref, text=self._thinking),
            self._event(
                "response.output_item.done", output_index=self._index, item=self._reasoning
            ),
        ]
        self._index += 1
        return out
