"""Anthropic's Messages API as the simulated boxes serve it, in the shape Ollama (0.14.0
and later) and llama-server document: a request is read into the box's own chat request
(the model's behaviour stays the box's), and the answer is written back as a message or
as Anthropic's event stream (``message_start``; per block ``content_block_start``,
``content_block_delta``, ``content_block_stop``; ``message_delta`` with the stop reason
and usage; ``message_stop``). Nothing here knows ollamux.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class MessagesError(ValueError):
    """A request the box refuses (400)."""


def chat_request(doc: dict[str, Any], *, default_max: int | None) -> dict[str, Any]:
    """The request as an OpenAI-style chat body with Ollama's extras (``images`` on a
    message, ``think``): what the simulated model reads. ``default_max``: what a request
    without ``max_tokens`` gets (llama-server: 4096; Ollama takes it as given)."""
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise MessagesError("model: Field required")
    raw = doc.get("messages")
    if not isinstance(raw, list) or not raw:
        raise MessagesError("messages: Field required")
    messages: list[dict[str, Any]] = []
    system = doc.get("system")
    if isinstance(system, list):
        system = "".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for message in raw:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise MessagesError("messages: each must be a user or assistant message")
        messages += _turn(message)
    out: dict[str, Any] = {"model": doc["model"], "messages": messages}
    tools = [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t.get("description", ""),
                "parameters": t.get("input_schema") or {},
            },
        }
        for t in doc.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("name"), str)
    ]
    if tools:
        out["tools"] = tools
    choice = doc.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "any", "none"):
            out["tool_choice"] = {"any": "required"}.get(kind, kind)
    limit = doc.get("max_tokens", default_max)
    if limit is not None:
        out["max_tokens"] = limit
    thinking = doc.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        out["think"] = True
        out["reasoning_effort"] = "medium"
    out["stream"] = doc.get("stream") is True
    return out


def _turn(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": message["role"], "content": content}]
    if not isinstance(content, list):
        raise MessagesError("messages: content must be a string or an array of blocks")
    texts: list[str] = []
    images: list[str] = []
    results: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "image":
            source = block.get("source") or {}
            if source.get("type") != "base64":
                raise MessagesError("invalid image source type: only base64 images are supported")
            images.append(str(source.get("data", "")))
        elif kind == "tool_result":
            text = block.get("content")
            if isinstance(text, list):
                text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
            results.append({"role": "tool", "content": str(text or "")})
    out = results
    if texts or images or not results:
        turn: dict[str, Any] = {"role": message["role"], "content": "".join(texts)}
        if images:
            turn["images"] = images
        out.append(turn)
    return out


@dataclass
class Reply:
    """What the model said, to be written as Anthropic's message or event stream."""

    model: str
    thinking: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # id, name, input
    finish: str = "stop"  # OpenAI's finish reason, or Ollama's done reason
    input_tokens: int = 0
    output_tokens: int = 0
    ident: str = field(default_factory=lambda: f"msg_{secrets.token_hex(12)}")
    # Ollama repeats input_tokens in the closing message_delta; llama-server gives only
    # output_tokens there (the prompt's size is in message_start alone).
    final_input: bool = True

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.calls else _STOP.get(self.finish, "end_turn")

    def message(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.thinking:
            content.append({"type": "thinking", "thinking": "".join(self.thinking)})
        if self.text:
            content.append({"type": "text", "text": "".join(self.text)})
        content += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in self.calls]
        return {
            "id": self.ident,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        }

    def events(self) -> list[bytes]:
        """The stream, one event a chunk: a token per delta, a tool call in one piece."""
        start = {**self.message(), "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": self.input_tokens, "output_tokens": 0}
        out = [event("message_start", {"type": "message_start", "message": start})]
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if self.thinking:
            deltas = [{"type": "thinking_delta", "thinking": t} for t in self.thinking]
            blocks.append(({"type": "thinking", "thinking": ""}, deltas))
        if self.text:
            blocks.append(({"type": "text", "text": ""}, [_text_delta(t) for t in self.text]))
        for ident, name, arguments in self.calls:
            json = orjson.dumps(arguments).decode()
            block = {"type": "tool_use", "id": ident, "name": name, "input": {}}
            blocks.append((block, [{"type": "input_json_delta", "partial_json": json}]))
        for index, (block, deltas) in enumerate(blocks):
            out.append(event("content_block_start", _start(index, block)))
            for delta in deltas:
                data = {"type": "content_block_delta", "index": index, "delta": delta}
                out.append(event("content_block_delta", data))
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        usage = {"output_tokens": self.output_tokens}
        if self.final_input:
            usage = {"input_tokens": self.input_tokens, **usage}
        final: dict[str, Any] = {"type": "message_delta"}
        final["delta"] = {"stop_reason": self.stop_reason}
        out.append(event("message_delta", {**final, "usage": usage}))
        out.append(event("message_stop", {"type": "message_stop"}))
        return out


def _text_delta(text: str) -> dict[str, Any]:
    return {"type": "text_delta", "text": text}


def _start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 404: "not_found_error", 503: "overloaded_error"}
    error = {"type": kinds.get(status, "api_error"), "message": message}
    return {"type": "error", "error": error}
