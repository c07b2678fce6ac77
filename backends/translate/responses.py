"""An OpenAI Responses client, a box that does not serve ``/v1/responses``: the request
as a chat completion, the answer back as a ``response`` object.

Ollama serves the Responses API itself since 0.13.3, stateless, by turning it into a
chat; this does the same for older Ollama boxes and for OpenAI-compatible servers
without the route. Requests: ``instructions`` and ``input`` (a string, or items:
messages with ``input_text``/``input_image``/``output_text`` parts, ``function_call``,
``function_call_output``, their ``custom_tool_call`` twins and ``reasoning`` items)
become chat messages; function and custom (freeform) ``tools``, ``tool_choice``,
``reasoning.effort``, ``max_output_tokens``, ``temperature``/``top_p`` and
``text.format`` become their chat twins, and fields this
module does not know are passed on (llama-server's ``top_k``, say). What no chat box can
do (stored state, built-in tools, files) is a 400 naming the field, never dropped.

Kept, not sent: ``store`` (nothing is stored, as on Ollama: answers say ``store: false``),
``include``, ``metadata``, ``user``, ``safety_identifier``, ``prompt_cache_key``,
``service_tier``, ``truncation``, ``reasoning.summary`` and ``text.verbosity`` are about
the service, not the model, and change nothing a box generates; ``max_tool_calls`` limits
built-in tools, which are refused anyway.

Answers: ``responses_answer`` (a whole chat completion as a ``response``) and
``responses_stream`` (its stream as the Responses events).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

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
        elif kind == "custom_tool_call":
            arguments = orjson.dumps({"input": str(item.get("input") or "")}).decode()
            message = _function_call({**item, "arguments": arguments}, i, out)
            if message is None:
                if thinking is not None:
                    out[-1]["reasoning_content"] = thinking
                    thinking = None
                continue
        elif kind in ("function_call_output", "custom_tool_call_output"):
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
        if kind not in ("function", "custom") or not isinstance(tool, dict):
            raise BadRequest(
                f"tools[{i}] of type {kind!r} cannot be served by a box without the Responses "
                "API: only function and custom tools can",
                param=f"tools[{i}].type",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise BadRequest(f"tools[{i}].name is required", param=f"tools[{i}].name")
        if kind == "custom":
            out.append({"type": "function", "function": _custom_function(tool)})
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        out.append({"type": "function", "function": function})
    return out


def custom_names(tools: object) -> frozenset[str]:
    """The client's custom (freeform) tools: their calls go back as custom_tool_call."""
    listed = tools if isinstance(tools, list) else []
    return frozenset(t["name"] for t in listed if isinstance(t, dict) and t.get("type") == "custom")


def _custom_function(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A custom tool (free text in, like Codex's apply_patch) as a function taking that
    text as its one argument, ``input``; its grammar, which a chat box cannot enforce,
    goes to the model in the description."""
    description = str(tool.get("description") or "")
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" and fmt.get("definition"):
        syntax = fmt.get("syntax") or "grammar"
        description += f"\n\nThe input must match this {syntax} grammar:\n{fmt['definition']}"
    text = {"type": "string", "description": "the tool's input, as free text"}
    parameters = {"type": "object", "properties": {"input": text}, "required": ["input"]}
    return {"name": tool["name"], "description": description.strip(), "parameters": parameters}


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
