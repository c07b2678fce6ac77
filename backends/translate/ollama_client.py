"""An Ollama client, a box that speaks OpenAI's API (llama-server, vLLM, ...).

Requests: ``/api/chat`` -> ``/v1/chat/completions``, ``/api/generate`` -> ``/v1/completions``
(or chat completions when it carries images or a system prompt, which completions cannot
express), ``/api/embed`` and ``/api/embeddings`` -> ``/v1/embeddings``. Answers come back
the other way, streams included, by ``OpenAIToOllama`` and ``EmbeddingsToOllama``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ollamux.backends.translate.common import (
    JSON,
    MALFORMED,
    MAX_EVENT_BYTES,
    NDJSON,
    SSEReader,
    WholeBody,
    arguments_object,
    convert_all,
    done_reason,
    error_message,
    image_url,
    iso_from_unix,
    loads_object,
    ndjson,
    now_iso,
    ollama_counts,
    ollama_error,
    openai_params,
    openai_tool_call,
    response_format,
    think_effort,
    untranslatable,
)
from ollamux.routing.errors import BadRequest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class Converted:
    """A request for the box: its path, its body, and how its answer is read back."""

    path: str
    body: dict[str, Any]
    chat: bool = True  # the box answers in chat completions' shape (else completions')


# -- requests -------------------------------------------------------------------------


def chat_request(doc: Mapping[str, Any], *, llama: bool = True) -> Converted:
    messages = doc.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages must be an array of objects")
    body: dict[str, Any] = {"model": doc["model"], "messages": openai_messages(messages)}
    if doc.get("tools"):
        body["tools"] = doc["tools"]
    return Converted(CHAT, _common(doc, body, llama=llama))


def generate_request(doc: Mapping[str, Any], *, llama: bool = True) -> Converted:
    prompt = doc.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    images = _images(doc.get("images"))
    system = doc.get("system")
    if images or (isinstance(system, str) and system):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt, "images": images})
        chat = {"model": doc["model"], "messages": openai_messages(messages)}
        return Converted(CHAT, _common(doc, chat, llama=llama))
    body: dict[str, Any] = {"model": doc["model"], "prompt": prompt}
    if isinstance(doc.get("suffix"), str) and doc["suffix"]:
        body["suffix"] = doc["suffix"]
    return Converted(COMPLETIONS, _common(doc, body, llama=llama), chat=False)


def embed_request(doc: Mapping[str, Any], *, legacy: bool) -> Converted:
    text = doc.get("prompt" if legacy else "input")
    ok = isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))
    if not ok:
        field = "prompt" if legacy else "input"
        raise BadRequest(f"{field} must be a string or an array of strings")
    body: dict[str, Any] = {"model": doc["model"], "input": text, "encoding_format": "float"}
    if isinstance(doc.get("dimensions"), int):
        body["dimensions"] = doc["dimensions"]
    return Converted(EMBEDDINGS, body)


def _common(doc: Mapping[str, Any], body: dict[str, Any], *, llama: bool) -> dict[str, Any]:
    body.update(openai_params(doc.get("options"), llama=llama))
    fmt = response_format(doc.get("format"))
    if fmt is not None:
        body["response_format"] = fmt
    effort = think_effort(doc.get("think"))
    if effort is not None and body.get("messages") is not None:
        body["reasoning_effort"] = effort
    for name in ("logprobs", "top_logprobs"):
        if doc.get(name) is not None:
            body[name] = doc[name]
    # Ollama streams unless told not to; OpenAI does not unless told to.
    body["stream"] = doc.get("stream") is not False
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    return body


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI's. Tool calls get ids when they have none (Ollama
    clients may drop them), and each tool result is matched to its call by tool name."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (tool name, call id) awaiting a result
    for i, message in enumerate(messages):
        role = message.get("role", "user")
        converted: dict[str, Any] = {"role": role, "content": _content(message)}
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            converted["tool_calls"] = [
                openai_tool_call(call, j, f"call_{i}_{j}") for j, call in enumerate(calls)
            ]
            pending = [(c["function"]["name"], c["id"]) for c in converted["tool_calls"]]
            if not converted["content"]:
                converted["content"] = None
        if isinstance(message.get("thinking"), str) and message["thinking"]:
            converted["reasoning_content"] = message["thinking"]
        if role == "tool":
            converted["tool_call_id"] = message.get("tool_call_id") or _match(message, pending)
        out.append(converted)
    return out


def _content(message: Mapping[str, Any]) -> Any:
    text = message.get("content") or ""
    images = _images(message.get("images"))
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": image_url(img)}} for img in images]
    return parts


def _images(images: object) -> list[str]:
    if images is None:
        return []
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise BadRequest("images must be an array of base64 strings")
    return images


def _match(message: Mapping[str, Any], pending: list[tuple[str, str]]) -> str:
    name = message.get("tool_name") or message.get("name")
    for k, (tool, call_id) in enumerate(pending):
        if tool == name or name is None:
            del pending[k]
            return call_id
    return pending.pop(0)[1] if pending else "call_unknown"


# -- answers --------------------------------------------------------------------------


def ollama_answer(
    doc: Mapping[str, Any], *, model: str, generate: bool, created_at: str
) -> dict[str, Any]:
    """A whole OpenAI (chat) completion as Ollama's final answer."""
    choices = doc.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    text = message.get("content") if "message" in choice else choice.get("text")
    thinking = message.get("reasoning_content") or message.get("reasoning") or ""
    calls = [_ollama_call(c, j) for j, c in enumerate(message.get("tool_calls") or [])]
    out = _piece(model, created_at, generate, text or "", thinking, calls)
    out.update(done=True, done_reason=done_reason(choice.get("finish_reason")))
    out.update(ollama_counts(doc.get("usage"), doc.get("timings")))
    return out


def _piece(
    model: str,
    created_at: str,
    generate: bool,
    text: str,
    thinking: str,
    calls: list[dict[str, Any]],
) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": created_at}
    if generate:
        out["response"] = text
        if thinking:
            out["thinking"] = thinking
        return out
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    out["message"] = message
    return out


def _ollama_call(call: Mapping[str, Any], index: int) -> dict[str, Any]:
    function = call.get("function") or {}
    out: dict[str, Any] = {
        "function": {
            "index": call.get("index", index),
            "name": function.get("name", ""),
            "arguments": arguments_object(function.get("arguments"), strict=False),
        }
    }
    if call.get("id"):
        out["id"] = call["id"]
    return out


class OpenAIToOllama:
    """A box's chat completion or completion, whole or streamed as server-sent events,
    as Ollama's answer: one object, or NDJSON lines ending with a ``done`` line that
    carries the reason and the token counts (from the box's usage chunk and timings)."""

    def __init__(
        self,
        model: str,
        *,
        stream: bool,
        generate: bool,
        clock: Callable[[], str] = now_iso,
        max_event: int = MAX_EVENT_BYTES,
    ) -> None:
        self._model = model
        self._stream = stream
        self._generate = generate
        self._clock = clock
        self._events = SSEReader(max_event)
        self._calls: dict[int, dict[str, Any]] = {}  # tool calls being streamed, by index
        self._reason: object = None
        self._usage: object = None
        self._timings: object = None
        self._finished = False

    def content_type(self, status: int, upstream: str) -> str:
        return NDJSON if self._stream and status < 400 else JSON

    def limit_events(self, limit: int) -> None:
        self._events.limit = limit

    def chunk(self, data: bytes) -> bytes:
        if self._finished:
            return b""
        return convert_all(self._events.feed(data), self._event, self._broken)

    def end(self) -> bytes:
        return convert_all(self._events.rest(), self._event, self._broken, self._finish)

    def _broken(self, exc: Exception) -> bytes:
        """The stream ends here, with a last line saying why."""
        if self._finished:
            return b""
        self._finished = True
        return ndjson({"error": untranslatable(exc).message})

    def whole(self, status: int, body: bytes) -> bytes:
        if status >= 400:
            return ollama_error(body)
        doc = loads_object(body)
        if doc is None:
            return ollama_error(body)
        try:
            created = iso_from_unix(doc.get("created"))
            answer = ollama_answer(
                doc, model=self._model, generate=self._generate, created_at=created
            )
            return ndjson(answer) if self._stream else orjson.dumps(answer)
        except MALFORMED as exc:
            raise untranslatable(exc) from exc

    def _event(self, payload: str) -> bytes:
        if self._finished:
            return b""
        if payload.strip() == "[DONE]":
            return self._finish()
        doc = loads_object(payload)
        if doc is None:
            return b""
        if doc.get("error") is not None:
            self._finished = True
            return ndjson({"error": error_message(payload.encode())})
        self._usage = doc.get("usage") or self._usage
        self._timings = doc.get("timings") or self._timings
        choices = doc.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else None
        if choice is None:  # a usage-only chunk
            return b""
        if choice.get("finish_reason"):
            self._reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        text = delta.get("content") if "delta" in choice else choice.get("text")
        thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
        for call in delta.get("tool_calls") or []:
            self._add_call(call)
        if not text and not thinking:
            return b""
        piece = _piece(self._model, self._clock(), self._generate, text or "", thinking, [])
        return ndjson({**piece, "done": False})

    def _add_call(self, call: Mapping[str, Any]) -> None:
        """Streamed tool calls come in fragments: the id and name first, then the
        arguments a few characters at a time, all under the call's index."""
        index = call.get("index", len(self._calls))
        function = call.get("function") or {}
        held = self._calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
        held["id"] = held["id"] or call.get("id")
        held["name"] += function.get("name") or ""
        held["arguments"] += function.get("arguments") or ""

    def _finish(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        out = b""
        now = self._clock()
        if self._calls:
            calls = [
                _ollama_call({"id": c["id"], "index": i, "function": c}, i)
                for i, c in sorted(self._calls.items())
            ]
            piece = _piece(self._model, now, self._generate, "", "", calls)
            out += ndjson({**piece, "done": False})
        final = _piece(self._model, now, self._generate, "", "", [])
        final.update(done=True, done_reason=done_reason(self._reason))
        final.update(ollama_counts(self._usage, self._timings))
        return out + ndjson(final)


class EmbeddingsToOllama(WholeBody):
    """OpenAI's embedding list as ``/api/embed`` (every vector) or ``/api/embeddings``."""

    def __init__(self, model: str, *, legacy: bool) -> None:
        self._model = model
        self._legacy = legacy

    def whole(self, status: int, body: bytes) -> bytes:
        if status >= 400:
            return ollama_error(body)
        doc = loads_object(body)
        if doc is None or not isinstance(doc.get("data"), list):
            return ollama_error(body)
        try:
            return orjson.dumps(ollama_embeddings(doc, model=self._model, legacy=self._legacy))
        except MALFORMED as exc:
            raise untranslatable(exc) from exc


def ollama_embeddings(doc: Mapping[str, Any], *, model: str, legacy: bool) -> dict[str, Any]:
    items = sorted(
        (d for d in doc.get("data") or [] if isinstance(d, dict)), key=lambda d: d.get("index", 0)
    )
    vectors = [d.get("embedding") or [] for d in items]
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    usage = doc.get("usage") or {}
    return {
        "model": model,
        "embeddings": vectors,
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
    }
