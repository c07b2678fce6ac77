"""An Anthropic Messages request, for a box that does not serve ``/v1/messages``.

``chat_request`` turns it into an OpenAI chat completions body (what llama-server and
other OpenAI-compatible boxes take); ``ollama_chat_request`` goes one step further, to
an Ollama ``/api/chat`` body, through the OpenAI -> Ollama converter the ``/v1`` routes
already use. Every field either has a faithful equivalent or is refused with a 400
naming it: nothing is dropped silently. The few fields that mean nothing to a local
box are listed in ``_MEANINGLESS`` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ollamux.backends.translate import openai_client as to_ollama
from ollamux.routing.errors import BadRequest

# Known top-level fields; anything else is refused on the translated path.
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "service_tier",
        "output_config",
        "output_format",
        "context_management",
    }
)
# Fields that only steer Anthropic's own service; a local box has nothing to honour:
# ``service_tier`` picks Anthropic's capacity pool, ``cache_control`` (on blocks and
# tools) marks prompt-cache breakpoints, which Ollama and llama-server need no hint for
# (they reuse any cached prefix by themselves).
_MEANINGLESS = frozenset({"service_tier", "cache_control"})
_TOOL_FIELDS = frozenset({"name", "description", "input_schema", "type", "cache_control"})
# Anthropic's effort levels as the boxes' (Ollama's own Messages does the same).
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
# Sent as max_tokens when counting: the box must evaluate the prompt, one token is enough.
COUNT_MAX_TOKENS = 1


def chat_request(doc: Mapping[str, Any], *, count: bool = False) -> dict[str, Any]:
    """A Messages request as an OpenAI chat completions body. ``count``: a
    ``count_tokens`` request, sent as a one-token generation whose usage says the count."""
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise BadRequest(
            f"{unknown[0]}: not supported by this model's box (it does not serve "
            "Anthropic's API, and the field has no equivalent there)"
        )
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty array")
    out: list[dict[str, Any]] = _system(doc.get("system"))
    for i, message in enumerate(messages):
        out += _message(message, f"messages.{i}")
    body: dict[str, Any] = {"model": doc["model"], "messages": out}
    tools = _tools(doc.get("tools"))
    choice = doc.get("tool_choice")
    if choice is not None:
        body.update(_tool_choice(choice, {t["function"]["name"] for t in tools}))
    if tools:
        body["tools"] = tools
    body.update(_sampling(doc, count=count))
    effort = _effort(doc.get("thinking"), doc.get("output_config"))
    if effort is not None:
        body["reasoning_effort"] = effort
    fmt = _format(doc.get("output_config"), doc.get("output_format"))
    if fmt is not None:
        body["response_format"] = fmt
    _context_management(doc.get("context_management"))
    user = _user(doc.get("metadata"))
    if user is not None:
        body["user"] = user
    if count:
        body["stream"] = False
    elif doc.get("stream") is True:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:
        body["stream"] = False
    return body


def ollama_chat_request(doc: Mapping[str, Any], *, count: bool = False) -> dict[str, Any]:
    """A Messages request as an Ollama ``/api/chat`` body."""
    choice = doc.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("any", "tool"):
        raise BadRequest(
            f"tool_choice: an Ollama box cannot be made to call a tool ({kind!r}); "
            'use {"type": "auto"} or {"type": "none"}'
        )
    body = chat_request(doc, count=count)
    if body.pop("tool_choice", None) == "none":
        body.pop("tools", None)  # no tools offered: none can be called
    body.pop("parallel_tool_calls", None)  # Ollama has no such switch; True is its way
    body.pop("user", None)  # who asks is ollamux's business (fair share), not the model's
    native = to_ollama.chat_request(body)
    thinking = doc.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        native["think"] = True  # Ollama's own switch; an effort level only suits gpt-oss
    if count:
        native["options"] = {**native.get("options", {}), "num_predict": COUNT_MAX_TOKENS}
    return native


# -- parts ----------------------------------------------------------------------------


def _system(system: object) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise BadRequest("system: must be a string or an array of text blocks")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise BadRequest(f"system.{i}: only text blocks can be a system prompt")
        _only(block, {"type", "text", "cache_control", "citations"}, f"system.{i}")
        texts.append(str(block.get("text", "")))
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _message(message: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise BadRequest(f"{where}: must be an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise BadRequest(f"{where}.role: must be user or assistant, not {role!r}")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: must be a string or an array of blocks")
    if role == "assistant":
        return [_assistant(content, where)]
    return _user_turn(content, where)


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))  # its signature is Anthropic's
        elif kind == "tool_use":
            if not block.get("id") or not block.get("name"):
                raise BadRequest(f"{at}: a tool_use block needs an id and a name")
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        else:
            raise BadRequest(f"{at}.type: {kind!r} blocks cannot be sent to this model's box")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        out["tool_calls"] = calls
    elif out["content"] is None:
        out["content"] = ""
    if thinking:
        out["reasoning_content"] = "".join(thinking)
    return out


def _user_turn(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """Tool results first (OpenAI wants them right after the assistant's calls), then
    the user's own text and images as one message. An image a tool returned (a
    screenshot) cannot ride in OpenAI's tool message: it opens that user message."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            result, images = _tool_result(block, at)
            results.append(result)
            parts += images
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block, at))
        else:
            raise BadRequest(f"{at}.type: {kind!r} blocks cannot be sent to this model's box")
    out = results
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _tool_result(block: Mapping[str, Any], at: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{at}.tool_use_id: required")
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        pieces = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                pieces.append(str(part.get("text", "")))
            elif kind == "image":
                images.append(_image(part, f"{at}.content.{k}"))
            else:
                raise BadRequest(
                    f"{at}.content.{k}.type: a tool result for this model's box can hold "
                    f"text and images, not {kind!r}"
                )
        text = "".join(pieces)
    else:
        raise BadRequest(f"{at}.content: must be a string or an array of blocks")
    if block.get("is_error") is True:
        # OpenAI's tool message has no error flag: the model reads it in the text instead.
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _image(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        mime = source.get("media_type") or "image/jpeg"
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise BadRequest(f"{at}.source.data: required for a base64 image")
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    if kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise BadRequest(f"{at}.source: images must be base64 (or a URL), not {kind!r}")


def _tools(tools: object) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools: must be an array")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise BadRequest(f"tools.{i}: must be an object with a name")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise BadRequest(
                f"tools.{i}.type: {kind!r} is a tool Anthropic runs itself; this model's box "
                "can only call tools the client defines (input_schema)"
            )
        _only(tool, _TOOL_FIELDS, f"tools.{i}")
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: object, names: set[str]) -> dict[str, Any]:
    if not isinstance(choice, dict):
        raise BadRequest("tool_choice: must be an object")
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if name not in names:
            raise BadRequest(f"tool_choice.name: {name!r} is not one of the tools")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise BadRequest(f"tool_choice.type: must be auto, any, tool or none, not {kind!r}")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def _sampling(doc: Mapping[str, Any], *, count: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    limit = doc.get("max_tokens")
    if count:
        out["max_tokens"] = COUNT_MAX_TOKENS
    elif limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise BadRequest("max_tokens: must be a positive integer")
        out["max_tokens"] = limit
    for name in ("temperature", "top_p", "top_k"):
        value = doc.get(name)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise BadRequest(f"{name}: must be a number")
            out[name] = value
    stops = doc.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences: must be an array of strings")
        out["stop"] = stops
    return out


def _effort(thinking: object, config: object) -> str | None:
    if isinstance(config, dict):
        _only(config, {"effort", "format"}, "output_config")
        effort = config.get("effort")
        if effort is not None and effort not in _EFFORTS:
            raise BadRequest(
                f"output_config.effort: must be low, medium, high, xhigh or max, not {effort!r}"
            )
        effort = _EFFORTS.get(effort) if effort is not None else None
    else:
        effort = None
    if thinking is None:
        return effort
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return "none"
    if kind in ("enabled", "adaptive"):
        # budget_tokens has no equivalent: llama-server and Ollama think until done, which
        # is what "adaptive" leaves to the model anyway.
        return effort or "medium"
    raise BadRequest(f"thinking.type: must be enabled, adaptive or disabled, not {kind!r}")


def _format(config: object, legacy: object) -> dict[str, Any] | None:
    """Structured output (``output_config.format``, or the older ``output_format``) as
    OpenAI's ``response_format``: a JSON schema the answer must follow."""
    fmt = config.get("format") if isinstance(config, dict) else None
    where = "output_config.format"
    if fmt is None and legacy is not None:
        fmt, where = legacy, "output_format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise BadRequest(f"{where}.type: only json_schema can be asked of this model's box")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise BadRequest(f"{where}.schema: must be a JSON schema object")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def _context_management(value: object) -> None:
    """Anthropic's server-side context editing (clearing old tool results or thinking
    once a prompt grows). No box can do it: the box gets the whole conversation, and the
    answer says that no edit was applied (``context_management.applied_edits: []``).
    Claude Code sends it with every request and cannot be told not to."""
    if value is not None and not isinstance(value, dict):
        raise BadRequest("context_management: must be an object")


def _user(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadRequest("metadata: must be an object")
    _only(metadata, {"user_id"}, "metadata")
    user = metadata.get("user_id")
    return user if isinstance(user, str) and user else None


def _only(obj: Mapping[str, Any], known: set[str] | frozenset[str], where: str) -> None:
    extra = sorted(k for k in obj if k not in known and k not in _MEANINGLESS)
    if extra:
        raise BadRequest(f"{where}.{extra[0]}: not supported by this model's box")
