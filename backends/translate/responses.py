"""An OpenAI Responses client, a box that does not serve ``/v1/responses``: the request
as a chat completion, the answer back as a ``response`` object.

Ollama serves the Responses API itself since 0.13.3, stateless, by turning it into a
chat; this does the same for older Ollama boxes and for OpenAI-compatible servers
without the route. Requests: ``instructions`` and ``input`` (a string, or items:
messages with ``input_text``/``input_image``/``output_text`` parts, ``function_call``,
``function_call_output`` and ``reasoning`` items) become chat messages; function
``tools``, ``tool_choice``, ``reasoning.effort``, ``max_output_tokens``,
``temperature``/``top_p`` and ``text.format`` become their chat twins, and fields this
module does not know are passed on (llama-server's ``top_k``, say). What no chat box can
do (stored state, built-in tools, files) is a 400 naming the field, never dropped.

Kept, not sent: ``store`` (nothing is stored, as on Ollama: answers say ``store: false``),
``include``, ``metadata``, ``user``, ``safety_identifier``, ``prompt_cache_key``,
``service_tier``, ``truncation``, ``reasoning.summary`` and ``text.verbosity`` are about
the service, not the model, and change nothing a box generates.

Answers: ``response_object`` turns a whole chat completion into a ``response``; the
stream is ``responses_stream.ChatToResponses``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from ollamux.routing.errors import BadRequest

# Responses fields consumed here; any other field goes on to the chat request as it came.
_CONSUMED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "reasoning",
        "max_output_tokens",
        "text",
        "stream",
        "stream_options",
        "store",
        "include",
        "metadata",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "service_tier",
        "truncation",
        "parallel_tool_calls",
        "previous_response_id",
        "conversation",
        "background",
        "max_tool_calls",
        "top_logprobs",
        "prompt",
    }
)
# Ollama's think levels (``reasoning.effort`` on an Ollama box).
_OLLAMA_EFFORTS = frozenset({"none", "low", "medium", "high"})


def stateless_check(doc: Mapping[str, Any]) -> None:
    """Refuse what needs a stored response, on any box: Ollama's Responses API is
    stateless too, and ollamux keeps no answers."""
    for name in ("previous_response_id", "conversation"):
        if doc.get(name) is not None:
            raise BadRequest(
                f"{name} is not supported: ollamux, like Ollama, serves the Responses API "
                "statelessly and stores no responses; send the whole conversation in input",
                param=name,
            )
    if doc.get("background") is True:
        raise BadRequest(
            "background responses are not supported: ollamux stores no responses to poll",
            param="background",
        )
    if doc.get("prompt") is not None:
        raise BadRequest("stored prompt templates (prompt) are not supported", param="prompt")
    if "input" not in doc and "instructions" not in doc:
        raise BadRequest("input is required", param="input")


# -- requests -------------------------------------------------------------------------


def chat_request(doc: Mapping[str, Any], *, ollama: bool = False) -> dict[str, Any]:
    """A Responses request as a chat completion request. ``ollama``: it goes on to an
    Ollama box's ``/api/chat``, which has no ``tool_choice`` and fewer think levels."""
    stateless_check(doc)
    body: dict[str, Any] = {k: v for k, v in doc.items() if k not in _CONSUMED}
    body["model"] = doc["model"]
    body["messages"] = messages(doc.get("instructions"), doc.get("input"))
    tools = _tools(doc.get("tools"))
    choice = _tool_choice(doc.get("tool_choice"), ollama=ollama)
    if choice == "none" and ollama:
        tools = []  # Ollama has no tool_choice: a model offered no tools calls none
    elif choice is not None:
        body["tool_choice"] = choice
    if tools:
        body["tools"] = tools
    if isinstance(doc.get("parallel_tool_calls"), bool) and tools and not ollama:
        body["parallel_tool_calls"] = doc["parallel_tool_calls"]
    effort = _effort(doc.get("reasoning"), ollama=ollama)
    if effort is not None:
        body["reasoning_effort"] = effort
    limit = doc.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise BadRequest(
                "max_output_tokens must be a positive integer", param="max_output_tokens"
            )
        body["max_tokens"] = limit
    fmt = _format(doc.get("text"))
    if fmt is not None:
        body["response_format"] = fmt
    if doc.get("top_logprobs"):
        raise BadRequest(
            "top_logprobs cannot be carried to a box without the Responses API",
            param="top_logprobs",
        )
    body["stream"] = doc.get("stream") is True
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}  # for response.completed's usage
    return body


def messages(instructions: object, items: object) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages."""
    out: list[dict[str, Any]] = []
    if isinstance(instructions, str):
        if instructions:
            out.append({"role": "system", "content": instructions})
    elif instructions is not None:
        raise BadRequest("instructions must be a string", param="instructions")
    if isinstance(items, str):
        out.append({"role": "user", "content": items})
        return out
    if items is None:
        return out
    if not isinstance(items, list):
        raise BadRequest("input must be a string or an array of items", param="input")
    thinking: str | None = None  # a reasoning item, for the assistant turn that follows
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"input[{i}] must be an object", param=f"input[{i}]")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "reasoning":
            thinking = _reasoning_text(item)
            continue
        message: dict[str, Any] | None
        if kind == "message":
            message = _message(item, i)
        elif kind == "function_call":
            message = _function_call(item, i, out)
            if message is None:  # merged into the assistant turn before it
                if thinking is not None:
                    out[-1]["reasoning_content"] = thinking
                    thinking = None
                continue
        elif kind == "function_call_output":
            message = {
                "role": "tool",
                "tool_call_id": _string(item, "call_id", i),
                "content": _output_text(item.get("output"), i),
            }
        else:
            raise BadRequest(
                f"input[{i}] of type {kind!r} cannot be served by a box without the "
                "Responses API (item references and built-in tool calls need stored state)",
                param=f"input[{i}].type",
            )
        if thinking is not None and message["role"] == "assistant":
            message["reasoning_content"] = thinking
            thinking = None
        out.append(message)
    if thinking is not None:
        out.append({"role": "assistant", "content": "", "reasoning_content": thinking})
    return out


def _message(item: Mapping[str, Any], i: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise BadRequest(
            f"input[{i}].role must be user, assistant, system or developer, not {role!r}",
            param=f"input[{i}].role",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise BadRequest(
            f"input[{i}].content must be a string or an array of parts",
            param=f"input[{i}].content",
        )
    parts = [_part(p, i, j) for j, p in enumerate(content)]
    if role != "user" or all(p["type"] == "text" for p in parts):
        if any(p["type"] != "text" for p in parts):
            raise BadRequest(
                f"input[{i}]: only user messages may carry images", param=f"input[{i}].content"
            )
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _part(part: object, i: int, j: int) -> dict[str, Any]:
    where = f"input[{i}].content[{j}]"
    if not isinstance(part, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise BadRequest(
                f"{where}: an input_image needs an image_url (file_id needs stored files)",
                param=f"{where}.image_url",
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise BadRequest(
        f"{where} of type {kind!r} cannot be served by a box without the Responses API",
        param=f"{where}.type",
    )


def _function_call(
    item: Mapping[str, Any], i: int, out: list[dict[str, Any]]
) -> dict[str, Any] | None:
    arguments = item.get("arguments", "")
    if not isinstance(arguments, str):
        raise BadRequest(f"input[{i}].arguments must be a JSON string", param=f"input[{i}]")
    call = {
        "id": _string(item, "call_id", i),
        "type": "function",
        "function": {"name": _string(item, "name", i), "arguments": arguments},
    }
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last:
        last["tool_calls"].append(call)
        return None
    if last is not None and last["role"] == "assistant" and not last.get("content"):
        last["tool_calls"] = [call]  # the reasoning-only turn this call belongs to
        return None
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _output_text(output: object, i: int) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                raise BadRequest(
                    f"input[{i}].output[{j}]: only text results can be carried to this box",
                    param=f"input[{i}].output",
                )
            texts.append(str(part.get("text") or ""))
        return "".join(texts)
    raise BadRequest(f"input[{i}].output must be a string", param=f"input[{i}].output")


def _reasoning_text(item: Mapping[str, Any]) -> str:
    summary = item.get("summary")
    texts = [
        str(s.get("text") or "")
        for s in (summary if isinstance(summary, list) else [])
        if isinstance(s, dict)
    ]
    content = item.get("content")
    texts += [
        str(c.get("text") or "")
        for c in (content if isinstance(content, list) else [])
        if isinstance(c, dict)
    ]
    return "".join(texts)


def _string(item: Mapping[str, Any], name: str, i: int) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"input[{i}].{name} is required", param=f"input[{i}].{name}")
    return value


def _tools(tools: object) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function" or not isinstance(tool, dict):
            raise BadRequest(
                f"tools[{i}] of type {kind!r} cannot be served by a box without the Responses "
                "API: only function tools can",
                param=f"tools[{i}].type",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise BadRequest(f"tools[{i}].name is required", param=f"tools[{i}].name")
        function: dict[str, Any] = {"name": tool["name"]}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: object, *, ollama: bool) -> Any:
    if choice is None or choice == "auto":
        return None if ollama else choice
    if choice == "none":
        return choice
    if ollama:
        raise BadRequest(
            f"tool_choice {choice!r} cannot be honoured by an Ollama box without the "
            "Responses API (Ollama has no tool_choice); use auto or none",
            param="tool_choice",
        )
    if choice == "required":
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest(
        f"tool_choice {choice!r} cannot be carried to a box without the Responses API",
        param="tool_choice",
    )


def _effort(reasoning: object, *, ollama: bool) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise BadRequest("reasoning must be an object", param="reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or (ollama and effort not in _OLLAMA_EFFORTS):
        raise BadRequest(
            f"reasoning.effort {effort!r} has no equivalent on an Ollama box "
            "(none, low, medium or high)",
            param="reasoning.effort",
        )
    return effort


def _format(text: object) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise BadRequest("text must be an object", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        spec: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": spec}
    raise BadRequest(f"text.format of type {kind!r} is not supported", param="text.format")


# -- answers --------------------------------------------------------------------------


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
    stem: str, j: int, call: Mapping[str, Any], status: str = "completed"
) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    return {
        "id": f"fc_{stem}_{j}",
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or f"call_{stem}_{j}",
        "name": function.get("name") or "",
        "arguments": arguments if isinstance(arguments, str) else "",
    }


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
    output += [call_item(stem, j, c) for j, c in enumerate(calls) if isinstance(c, dict)]
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
