"""What both directions of translation (Ollama's API <-> OpenAI's) share: stream framing,
finish reasons, images, tool calls, sampling options, token counts and error shapes.

Everything here is a pure function or a small incremental parser; the translators in
``translate_ollama_client`` and ``translate_openai_client`` are built from these parts.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from ollamux.backends.relay import Breakable, Translator
from ollamux.routing.errors import BadRequest, ProxyError, UpstreamBadAnswer

SSE_DONE = b"data: [DONE]\n\n"
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
JSON = "application/json"

# OpenAI's sampling parameters and the Ollama options they are.
STANDARD_OPTIONS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
# Not OpenAI's, but llama-server (and vLLM) take them under the same names.
LLAMA_OPTIONS = {
    name: name
    for name in (
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    )
}

# Ollama's done_reason says "stop" when the model called tools; OpenAI says "tool_calls".
_DONE_REASONS = {"length": "length"}
_IMAGE_MAGIC = (
    ("/9j/", "image/jpeg"),
    ("iVBORw0KGgo", "image/png"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
    ("Qk", "image/bmp"),
)
_DATA_URL = re.compile(r"data:([^;,]*)(;[^,]*)?,(.*)", re.DOTALL)
_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso_from_unix(ts: object) -> str:
    if isinstance(ts, int | float) and not isinstance(ts, bool) and ts > 0:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    return now_iso()


def unix_from_iso(text: object) -> int:
    if isinstance(text, str):
        try:
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    return 0


# -- finish reasons -------------------------------------------------------------------


def done_reason(finish_reason: object) -> str:
    """OpenAI's finish_reason as Ollama's done_reason."""
    return _DONE_REASONS.get(str(finish_reason), "stop")


def finish_reason(done_reason: object, tool_calls: bool) -> str:
    """Ollama's done_reason as OpenAI's finish_reason."""
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


# -- images ---------------------------------------------------------------------------


def image_url(image: str) -> str:
    """An Ollama image (bare base64) as the data URL OpenAI's API takes."""
    mime = next((m for prefix, m in _IMAGE_MAGIC if image.startswith(prefix)), "image/jpeg")
    return f"data:{mime};base64,{image}"


def image_data(url: str) -> str:
    """A data URL as the bare base64 Ollama takes; anything else cannot be sent to it."""
    match = _DATA_URL.fullmatch(url)
    if match is None or "base64" not in (match.group(2) or ""):
        raise BadRequest("an Ollama box takes images as base64 data: URLs only")
    data = match.group(3)
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise BadRequest("an image data: URL holds invalid base64") from exc
    return data


# -- tool calls -----------------------------------------------------------------------


def arguments_text(arguments: object) -> str:
    """Ollama's arguments (an object) as OpenAI's (a JSON string)."""
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()


def arguments_object(text: object, *, strict: bool) -> Any:
    """OpenAI's arguments (a JSON string) as Ollama's (an object)."""
    if not isinstance(text, str):
        return text if isinstance(text, dict) else {}
    if not text.strip():
        return {}
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if strict:
            raise BadRequest(f"tool call arguments are not valid JSON: {text[:80]!r}") from exc
        return text  # a model's broken JSON, shown as it came rather than dropped


def _function(call: object) -> Mapping[str, Any]:
    """A tool call's function object; a call that is not shaped so is the client's error."""
    function = (call.get("function") or {}) if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping):
        raise BadRequest("tool_calls must be objects, each with a function object")
    return function


def openai_tool_call(call: Mapping[str, Any], index: int, fallback_id: str) -> dict[str, Any]:
    function = _function(call)
    return {
        "id": call.get("id") or fallback_id,
        "index": index,
        "type": "function",
        "function": {
            "name": function.get("name", ""),
            "arguments": arguments_text(function.get("arguments")),
        },
    }


def ollama_tool_call(call: Mapping[str, Any], index: int, *, strict: bool) -> dict[str, Any]:
    function = _function(call)
    out: dict[str, Any] = {
        "function": {
            "index": index,
            "name": function.get("name", ""),
            "arguments": arguments_object(function.get("arguments"), strict=strict),
        }
    }
    if call.get("id"):
        out["id"] = call["id"]
    return out


# -- structured output ----------------------------------------------------------------


def response_format(fmt: object) -> dict[str, Any] | None:
    """Ollama's ``format`` as OpenAI's ``response_format``."""
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        title = fmt.get("title")
        name = _SCHEMA_NAME.sub("_", title)[:64] if isinstance(title, str) else ""
        return {"type": "json_schema", "json_schema": {"name": name or "response", "schema": fmt}}
    return None


def ollama_format(fmt: object) -> Any:
    """OpenAI's ``response_format`` as Ollama's ``format`` (None: free text)."""
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return fmt.get("schema") or "json"  # llama-server's json_object may carry a schema
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else fmt.get("schema") or "json"
    return None


# -- sampling options -----------------------------------------------------------------


def openai_params(options: object, *, llama: bool) -> dict[str, Any]:
    """Ollama's ``options`` as OpenAI request parameters; llama-server takes a few more."""
    if not isinstance(options, dict):
        return {}
    table = {**STANDARD_OPTIONS, **LLAMA_OPTIONS} if llama else STANDARD_OPTIONS
    params = {table[k]: v for k, v in options.items() if k in table and v is not None}
    if isinstance(params.get("max_tokens"), int) and params["max_tokens"] < 0:
        del params["max_tokens"]  # Ollama's -1/-2: until the model stops, OpenAI's default
    return params


def ollama_options(doc: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI request parameters as Ollama's ``options``."""
    reverse = {v: k for k, v in {**STANDARD_OPTIONS, **LLAMA_OPTIONS}.items()}
    options = {reverse[k]: v for k, v in doc.items() if k in reverse and v is not None}
    limit = doc.get("max_completion_tokens")
    if limit is not None:
        options["num_predict"] = limit
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    return options


def think_effort(think: object) -> str | None:
    """Ollama's ``think`` as OpenAI's ``reasoning_effort`` (True: OpenAI's default effort)."""
    if think is False:
        return "none"
    if think is True:
        return "medium"
    return think if think in ("low", "medium", "high") else None


def effort_think(effort: object) -> bool | str | None:
    if effort == "none":
        return False
    return effort if effort in ("low", "medium", "high") else None


# -- token counts ---------------------------------------------------------------------


def ollama_counts(usage: object, timings: object) -> dict[str, int]:
    """OpenAI's usage (and llama-server's timings) as Ollama's final counts."""
    counts: dict[str, int] = {}
    if isinstance(usage, dict):
        counts["prompt_eval_count"] = int(usage.get("prompt_tokens") or 0)
        counts["eval_count"] = int(usage.get("completion_tokens") or 0)
    if isinstance(timings, dict):
        prompt_ns = int(float(timings.get("prompt_ms") or 0) * 1e6)
        eval_ns = int(float(timings.get("predicted_ms") or 0) * 1e6)
        counts.update(
            total_duration=prompt_ns + eval_ns,
            prompt_eval_duration=prompt_ns,
            eval_duration=eval_ns,
        )
    return counts


def openai_usage(final: Mapping[str, Any]) -> dict[str, int]:
    prompt = int(final.get("prompt_eval_count") or 0)
    completion = int(final.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# -- embeddings -----------------------------------------------------------------------


def floats_base64(vector: list[float]) -> str:
    """OpenAI's base64 embedding encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def base64_floats(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# -- framing --------------------------------------------------------------------------


def sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def ndjson(obj: object) -> bytes:
    return orjson.dumps(obj) + b"\n"


# -- what a box's answer may be --------------------------------------------------------

T = TypeVar("T")

MAX_EVENT_BYTES = 16 * 2**20  # limits.max_box_event_bytes' default
# What a box answer of an unexpected shape makes the conversion code raise: caught at each
# translator's boundary and turned into an error for the client, never a crash.
MALFORMED: tuple[type[Exception], ...] = (
    TypeError,
    ValueError,
    AttributeError,
    KeyError,
    IndexError,
    OverflowError,
    struct.error,
    UpstreamBadAnswer,
)


def convert_all(
    items: Iterable[T],
    convert: Callable[[T], bytes],
    broken: Callable[[Exception], bytes],
    then: Callable[[], bytes] = lambda: b"",
) -> bytes:
    """``convert`` each of a box's lines or events (reading them may raise too), then add
    ``then()``; an answer of an unexpected shape ends the output with ``broken``."""
    out = b""
    try:
        for item in items:
            out += convert(item)
        return out + then()
    except MALFORMED as exc:
        return out + broken(exc)


def untranslatable(exc: Exception) -> UpstreamBadAnswer:
    if isinstance(exc, UpstreamBadAnswer):
        return exc
    what = f"{type(exc).__name__}: {exc}"[:200]
    return UpstreamBadAnswer(f"the box's answer could not be translated ({what})", box="")


def event_too_large(limit: int) -> UpstreamBadAnswer:
    return UpstreamBadAnswer(
        f"the box sent a stream event over {limit} bytes (limits.max_box_event_bytes)", box=""
    )


class SSEReader:
    """Server-sent events arriving in arbitrary pieces, as the data of whole events. An
    event that grows past ``limit`` bytes unended is the box's error, not a bigger buffer."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self.limit = limit

    def feed(self, data: bytes) -> Iterator[str]:
        # On the whole buffer: a CRLF may be split between two pieces.
        self._buffer = (self._buffer + data).replace(b"\r\n", b"\n")
        while (end := self._buffer.find(b"\n\n")) >= 0:
            event, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            lines = [ln[5:].removeprefix(b" ") for ln in event.split(b"\n") if ln[:5] == b"data:"]
            if lines:
                yield b"\n".join(lines).decode("utf-8", "replace")
        if len(self._buffer) > self.limit:
            self._buffer = b""
            raise event_too_large(self.limit)

    def rest(self) -> Iterator[str]:
        """An event the box did not end with a blank line before closing."""
        if self._buffer.strip():
            yield from self.feed(b"\n\n")


class LineReader:
    """NDJSON arriving in arbitrary pieces, as parsed objects of whole lines."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self.limit = limit

    def feed(self, data: bytes) -> Iterator[Any]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self.limit:
            self._buffer = b""
            raise event_too_large(self.limit)
        yield from _objects(lines)

    def rest(self) -> Iterator[Any]:
        lines, self._buffer = [self._buffer], b""
        yield from _objects(lines)


def _objects(lines: list[bytes]) -> Iterator[Any]:
    for line in lines:
        if line.strip():
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                continue


def loads_object(payload: str | bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


# -- errors ---------------------------------------------------------------------------


def error_message(body: bytes) -> str:
    """The message of an error body in either API's shape (or plain text)."""
    doc = loads_object(body) if body.strip() else None
    if doc is not None:
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(doc.get("message"), str):
            return str(doc["message"])
    return body.decode("utf-8", "replace").strip() or "the box answered with an error"


def ollama_error(body: bytes) -> bytes:
    return orjson.dumps({"error": error_message(body)})


def openai_error(status: int, body: bytes) -> bytes:
    """A box's error in OpenAI's shape (an OpenAI-shaped one passes through whole)."""
    doc = loads_object(body) if body.strip() else None
    if doc is not None and isinstance(doc.get("error"), dict):
        return body
    kind = "invalid_request_error" if status < 500 else "api_error"
    if status == 404:
        kind = "not_found_error"
    error = {"message": error_message(body), "type": kind, "code": status}
    return orjson.dumps({"error": error})


class WholeBody:
    """A translator for answers that never stream (embeddings): only ``whole`` converts."""

    def content_type(self, status: int, upstream: str) -> str:
        return JSON

    def chunk(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""

    def limit_events(self, limit: int) -> None:
        pass  # nothing is buffered


class Chain:
    """Two translators in a row: the box's answer through ``first``, then ``second``
    (Ollama's /api/chat -> OpenAI's chat completions -> Anthropic's or the Responses
    API's). A broken stream ends the way ``second``'s API ends one."""

    def __init__(self, first: Translator, second: Translator) -> None:
        self._first = first
        self._second = second

    def limit_events(self, limit: int) -> None:
        self._first.limit_events(limit)
        self._second.limit_events(limit)

    def content_type(self, status: int, upstream: str) -> str:
        return self._second.content_type(status, self._first.content_type(status, upstream))

    def chunk(self, data: bytes) -> bytes:
        middle = self._first.chunk(data)
        return self._second.chunk(middle) if middle else b""

    def end(self) -> bytes:
        return self._second.chunk(self._first.end()) + self._second.end()

    def whole(self, status: int, body: bytes) -> bytes:
        return self._second.whole(status, self._first.whole(status, body))

    def broken(self, error: ProxyError) -> bytes:
        second = self._second
        return second.broken(error) if isinstance(second, Breakable) else b""
