"""A chat completion's whole answer as the Responses API's ``response`` object, and the
output items and usage its stream (``responses_stream``) is made of.

Output items: ``reasoning`` (the chat's ``reasoning_content``, as its summary), a
``message`` with one ``output_text`` part, and one ``function_call`` per tool call (a
``custom_tool_call`` for a tool the client declared ``custom``: its raw input). Status:
``incomplete`` with ``incomplete_details.reason`` when the chat stopped at its length
limit (``max_output_tokens``) or a content filter, else ``completed``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ollamux.backends.translate.responses import custom_names


def new_ids() -> tuple[str, str]:
    """A response id and the id stem of its output items."""
    stem = secrets.token_hex(12)
    return f"resp_{stem}", stem


def usage(chat_usage: object) -> dict[str, Any] | None:
    """Chat completions' usage as the Responses API's."""
    if not isinstance(chat_usage, dict):
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    output = int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": prompt + output,
    }


def envelope(
    request: Mapping[str, Any],
    ident: str,
    created: int,
    *,
    status: str,
    output: list[Any],
    usage: Any = None,
    finish: str | None = None,
) -> dict[str, Any]:
    """The ``response`` object, echoing the request's settings as OpenAI's does. Usage
    comes last, so a long answer's counts stay in the relay's tail (accounting)."""
    reasoning = _object(request.get("reasoning"))
    text = _object(request.get("text"))
    out: dict[str, Any] = {
        "id": ident,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": _incomplete(finish) if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model"),
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,
        "temperature": request.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": request.get("metadata") or {},
        "usage": usage,
    }
    return out


def _object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def status_of(finish_reason: object) -> str:
    return "incomplete" if finish_reason in ("length", "content_filter") else "completed"


def _incomplete(finish: str | None) -> dict[str, str]:
    return {"reason": "content_filter" if finish == "content_filter" else "max_output_tokens"}


def reasoning_item(stem: str, text: str) -> dict[str, Any]:
    return {
        "id": f"rs_{stem}",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
    }


def message_item(stem: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": f"msg_{stem}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def call_item(
    stem: str,
    j: int,
    call: Mapping[str, Any],
    status: str = "completed",
    custom: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """A chat tool call as a ``function_call`` item; a call of a custom tool as a
    ``custom_tool_call`` with its raw input."""
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if function.get("name") in custom:
        return {
            "id": f"ctc_{stem}_{j}",
            "type": "custom_tool_call",
            "status": status,
            "call_id": call.get("id") or f"call_{stem}_{j}",
            "name": function["name"],
            "input": custom_input(arguments),
        }
    return {
        "id": f"fc_{stem}_{j}",
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or f"call_{stem}_{j}",
        "name": function.get("name") or "",
        "arguments": arguments if isinstance(arguments, str) else "",
    }


def custom_input(arguments: object) -> str:
    """A custom tool's raw input, from the ``{"input": ...}`` arguments it was called with
    (a model's arguments that are not so are its input as they came)."""
    if isinstance(arguments, dict):
        value = arguments.get("input")
        return value if isinstance(value, str) else orjson.dumps(arguments).decode()
    if not isinstance(arguments, str):
        return ""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
        return str(parsed["input"])
    return arguments


def response_object(
    completion: Mapping[str, Any], request: Mapping[str, Any], ident: str, stem: str
) -> dict[str, Any]:
    """A whole chat completion as a ``response``."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") or {}
    output: list[Any] = []
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thinking, str) and thinking:
        output.append(reasoning_item(stem, thinking))
    text = message.get("content")
    listed = message.get("tool_calls")
    calls: list[Any] = listed if isinstance(listed, list) else []
    if (isinstance(text, str) and text) or not calls:
        output.append(message_item(stem, text if isinstance(text, str) else ""))
    custom = custom_names(request.get("tools"))
    output += [
        call_item(stem, j, c, custom=custom) for j, c in enumerate(calls) if isinstance(c, dict)
    ]
    finish = choice.get("finish_reason")
    created = completion.get("created")
    return envelope(
        request,
        ident,
        created if isinstance(created, int) else int(time.time()),
        status=status_of(finish),
        output=output,
        usage=usage(completion.get("usage")),
        finish=finish if isinstance(finish, str) else None,
    )
