"""The shape of an OpenAI chat request's messages, checked at the edge: whatever box
serves it, a malformed message is a 400 naming the field, never a conversion's crash.
Only what OpenAI's API defines as typed is checked; fields it does not know pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ollamux.routing.api.body import kind_of
from ollamux.routing.errors import BadRequest


def validate_chat(doc: Mapping[str, Any]) -> None:
    messages = doc.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages must be an array")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong(where, "an object", message)
        _string(message, "role", where, required=True)
        _content(message.get("content"), f"{where}.content")
        for name in ("tool_call_id", "name", "reasoning_content"):
            _string(message, name, where)
        calls = message.get("tool_calls")
        if calls is None:
            continue
        if not isinstance(calls, list):
            raise _wrong(f"{where}.tool_calls", "an array", calls)
        for j, call in enumerate(calls):
            _tool_call(call, f"{where}.tool_calls[{j}]")


def _tool_call(call: object, where: str) -> None:
    if not isinstance(call, dict):
        raise _wrong(where, "an object", call)
    _string(call, "id", where)
    function = call.get("function")
    if not isinstance(function, dict):
        raise _wrong(f"{where}.function", "an object with name and arguments", function)
    _string(function, "name", f"{where}.function")
    arguments = function.get("arguments")
    if arguments is not None and not isinstance(arguments, str | dict):
        raise _wrong(f"{where}.function.arguments", "a string of JSON", arguments)


def _content(content: object, where: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong(where, "a string or an array of parts", content)
    for k, part in enumerate(content):
        at = f"{where}[{k}]"
        if not isinstance(part, dict):
            raise _wrong(at, "an object", part)
        _string(part, "type", at, required=True)
        if part["type"] == "text":
            _string(part, "text", at, required=True)
        elif part["type"] == "image_url":
            url = part.get("image_url")
            if isinstance(url, dict):
                _string(url, "url", f"{at}.image_url", required=True)
            elif not isinstance(url, str):
                raise _wrong(f"{at}.image_url", "an object with a url", url)


def _string(doc: Mapping[str, Any], name: str, where: str, *, required: bool = False) -> None:
    value = doc.get(name)
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise _wrong(f"{where}.{name}", "a string", value)


def _wrong(where: str, expected: str, value: object) -> BadRequest:
    return BadRequest(f"{where} must be {expected}, not {kind_of(value)}")
