"""An OpenAI client, an Ollama box reached through its native API.

This is the fallback for Ollama boxes not known to serve their own ``/v1`` (which is
preferred: bytes through). Requests: ``/v1/chat/completions`` -> ``/api/chat``,
``/v1/completions`` -> ``/api/generate``, ``/v1/embeddings`` -> ``/api/embed``; answers
come back as OpenAI's, streams as server-sent events ending with ``data: [DONE]``.
Fields Ollama has no equivalent for (``n``, ``tool_choice``, ``logit_bias``, ...) cannot
be carried on this path.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ollamux.backends.translate.common import (
    EVENT_STREAM,
    JSON,
    MALFORMED,
    MAX_EVENT_BYTES,
    SSE_DONE,
    LineReader,
    WholeBody,
    convert_all,
    effort_think,
    finish_reason,
    floats_base64,
    image_data,
    loads_object,
    ollama_format,
    ollama_options,
    ollama_tool_call,
    openai_error,
    openai_tool_call,
    openai_usage,
    sse,
    unix_from_iso,
    untranslatable,
)
from ollamux.routing.errors import BadRequest

CHAT = "/api/chat"
GENERATE = "/api/generate"
EMBED = "/api/embed"


# -- requests -------------------------------------------------------------------------


def chat_request(doc: Mapping[str, Any]) -> dict[str, Any]:
    messages = doc.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages must be an array of objects")
    body: dict[str, Any] = {"model": doc["model"], "messages": ollama_messages(messages)}
    if doc.get("tools"):
        body["tools"] = doc["tools"]
    fmt = ollama_format(doc.get("response_format"))
    if fmt is not None:
        body["format"] = fmt
    think = effort_think(doc.get("reasoning_effort"))
    if think is not None:
        body["think"] = think
    return _common(doc, body)


def completion_request(doc: Mapping[str, Any]) -> dict[str, Any]:
    prompt = doc.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("an Ollama box takes one prompt string per completion")
    body: dict[str, Any] = {"model": doc["model"], "prompt": prompt}
    if isinstance(doc.get("suffix"), str):
        body["suffix"] = doc["suffix"]
    return _common(doc, body)


def embed_request(doc: Mapping[str, Any]) -> dict[str, Any]:
    text = doc.get("input")
    ok = isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))
    if not ok:
        raise BadRequest("input must be a string or an array of strings for an Ollama box")
    body: dict[str, Any] = {"model": doc["model"], "input": text}
    if isinstance(doc.get("dimensions"), int):
        body["dimensions"] = doc["dimensions"]
    return body


def _common(doc: Mapping[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    options = ollama_options(doc)
    if options:
        body["options"] = options
    body["stream"] = doc.get("stream") is True  # OpenAI's default is one whole answer
    return body


def ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as Ollama's: content parts become text plus base64 images, and a
    tool result carries the name of the call it answers."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role", "user")
        converted: dict[str, Any] = {"role": "system" if role == "developer" else role}
        converted.update(_content(message.get("content")))
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            converted["tool_calls"] = [
                ollama_tool_call(c, j, strict=True) for j, c in enumerate(calls)
            ]
            names.update({c["id"]: c["function"].get("name", "") for c in calls if c.get("id")})
        thinking = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(thinking, str) and thinking:
            converted["thinking"] = thinking
        if role == "tool":
            call_id = message.get("tool_call_id")
            converted["tool_name"] = message.get("name") or names.get(call_id or "", "")
            if call_id:
                converted["tool_call_id"] = call_id
        out.append(converted)
    return out


def _content(content: object) -> dict[str, Any]:
    if content is None or isinstance(content, str):
        return {"content": content or ""}
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or an array of parts")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(image_data(url.get("url", "") if isinstance(url, dict) else str(url)))
        else:
            raise BadRequest(f"an Ollama box cannot take content parts of type {kind!r}")
    out: dict[str, Any] = {"content": "\n".join(texts)}
    if images:
        out["images"] = images
    return out


# -- answers --------------------------------------------------------------------------


def openai_answer(
    final: Mapping[str, Any], *, model: str, completion: bool, ident: str
) -> dict[str, Any]:
    """Ollama's whole answer as an OpenAI chat completion (or completion)."""
    created = unix_from_iso(final.get("created_at")) or int(time.time())
    usage = openai_usage(final)
    if completion:
        reason = finish_reason(final.get("done_reason"), False)
        choice = {"index": 0, "text": final.get("response", ""), "finish_reason": reason}
        return _envelope("text_completion", ident, created, model, [choice], usage)
    message = final.get("message") or {}
    calls = [openai_tool_call(c, j, f"call_{ident}_{j}") for j, c in enumerate(_calls(message))]
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if calls:
        out["tool_calls"] = calls
        out["content"] = out["content"] or None
    if message.get("thinking"):
        out["reasoning_content"] = message["thinking"]
    choice = {
        "index": 0,
        "message": out,
        "finish_reason": finish_reason(final.get("done_reason"), bool(calls)),
    }
    return _envelope("chat.completion", ident, created, model, [choice], usage)


def _envelope(
    kind: str, ident: str, created: int, model: str, choices: list[Any], usage: Any
) -> dict[str, Any]:
    out = {"id": ident, "object": kind, "created": created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def _calls(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A box's tool calls; one that is not an object with a function object makes the
    box's answer malformed (ValueError: the stream ends with an error, a whole answer is
    a 502), never a client's 400."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    if not all(isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls):
        raise ValueError("the box sent a tool call that is not an object with a function")
    return calls


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class OllamaToOpenAI:
    """An Ollama box's answer (one object, or NDJSON lines) as OpenAI's: a whole
    completion, or server-sent chunks: the role first, then content, reasoning and tool
    calls, then the finish reason, the usage (when asked for) and ``data: [DONE]``."""

    def __init__(
        self,
        model: str,
        *,
        stream: bool,
        completion: bool,
        include_usage: bool = False,
        ident: Callable[[str], str] = new_id,
        max_event: int = MAX_EVENT_BYTES,
    ) -> None:
        self._model = model
        self._stream = stream
        self._completion = completion
        self._include_usage = include_usage
        self._id = ident("cmpl" if completion else "chatcmpl")
        self._lines = LineReader(max_event)
        self._created = int(time.time())
        self._started = False
        self._calls = 0
        self._sent: Counter[bytes] = Counter()  # the calls streamed so far, for repeats
        self._finished = False

    def content_type(self, status: int, upstream: str) -> str:
        return EVENT_STREAM if self._stream and status < 400 else JSON

    def limit_events(self, limit: int) -> None:
        self._lines.limit = limit

    def chunk(self, data: bytes) -> bytes:
        if self._finished:
            return b""
        return convert_all(self._lines.feed(data), self._line, self._broken)

    def end(self) -> bytes:
        return convert_all(self._lines.rest(), self._line, self._broken, self._done)

    def _done(self) -> bytes:
        return b"" if self._finished else SSE_DONE

    def _broken(self, exc: Exception) -> bytes:
        """The stream ends here, with an error event saying why."""
        if self._finished:
            return b""
        self._finished = True
        error = {"message": untranslatable(exc).message, "type": "api_error", "code": 502}
        return sse({"error": error}) + SSE_DONE

    def whole(self, status: int, body: bytes) -> bytes:
        if status >= 400:
            return openai_error(status, body)
        final = loads_object(body)
        if final is None:
            return openai_error(502, body)
        if self._stream:  # the box answered whole though asked to stream
            return self.chunk(body + b"\n") + self.end()
        try:
            answer = openai_answer(
                final, model=self._model, completion=self._completion, ident=self._id
            )
            return orjson.dumps(answer)
        except MALFORMED as exc:
            raise untranslatable(exc) from exc

    def _line(self, doc: Mapping[str, Any]) -> bytes:
        if self._finished or not isinstance(doc, dict):
            return b""
        if doc.get("error") is not None:
            self._finished = True
            error = {"message": str(doc["error"]), "type": "api_error", "code": 502}
            return sse({"error": error}) + SSE_DONE
        out = self._piece(doc)
        if not doc.get("done"):
            return out
        self._finished = True
        tools = self._calls > 0
        out += self._chunk({}, finish_reason(doc.get("done_reason"), tools), text="")
        if self._include_usage:
            out += sse(self._base([], openai_usage(doc)))
        return out + SSE_DONE

    def _piece(self, doc: Mapping[str, Any]) -> bytes:
        if self._completion:
            text = doc.get("response") or ""
            return self._chunk({}, None, text=text) if text else b""
        message = doc.get("message") or {}
        delta: dict[str, Any] = {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        calls = self._news(_calls(message), bool(doc.get("done")))
        if calls:
            delta["tool_calls"] = [
                openai_tool_call(c, self._calls + j, f"call_{self._id[-8:]}_{self._calls + j}")
                for j, c in enumerate(calls)
            ]
            self._calls += len(calls)
        return self._chunk(delta, None) if delta else b""

    def _news(self, calls: list[Mapping[str, Any]], done: bool) -> list[Mapping[str, Any]]:
        """The calls to pass on: Ollama sends each call once, in the chunk that parsed it,
        but a box that repeats them in its final chunk must not call a tool twice. Only
        the final chunk's repeats are dropped; a call first parsed there is news."""
        keys = [orjson.dumps(c.get("function"), option=orjson.OPT_SORT_KEYS) for c in calls]
        if not done:
            self._sent.update(keys)
            return calls
        fresh = []
        for call, key in zip(calls, keys, strict=True):
            if self._sent[key] > 0:
                self._sent[key] -= 1
            else:
                fresh.append(call)
        return fresh

    def _chunk(self, delta: dict[str, Any], reason: str | None, text: str | None = None) -> bytes:
        if self._completion:
            choice: dict[str, Any] = {"index": 0, "text": text or "", "finish_reason": reason}
            return sse(self._base([choice], None))
        if not self._started:
            delta = {"role": "assistant", **delta}
            self._started = True
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        return sse(self._base([choice], None))

    def _base(self, choices: list[Any], usage: Any) -> dict[str, Any]:
        kind = "text_completion" if self._completion else "chat.completion.chunk"
        return _envelope(kind, self._id, self._created, self._model, choices, usage)


class OllamaToEmbeddings(WholeBody):
    """``/api/embed``'s vectors as OpenAI's embedding list (floats or base64)."""

    def __init__(self, model: str, *, base64: bool) -> None:
        self._model = model
        self._base64 = base64

    def whole(self, status: int, body: bytes) -> bytes:
        if status >= 400:
            return openai_error(status, body)
        doc = loads_object(body)
        if doc is None or not isinstance(doc.get("embeddings"), list):
            return openai_error(502, body)
        try:
            return orjson.dumps(openai_embeddings(doc, model=self._model, base64=self._base64))
        except MALFORMED as exc:
            raise untranslatable(exc) from exc


def openai_embeddings(doc: Mapping[str, Any], *, model: str, base64: bool) -> dict[str, Any]:
    vectors = doc.get("embeddings") or []
    data = [
        {"object": "embedding", "index": i, "embedding": floats_base64(v) if base64 else v}
        for i, v in enumerate(vectors)
    ]
    tokens = int(doc.get("prompt_eval_count") or 0)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
