"""Reading a client's JSON body once: the bytes are forwarded as they came, the parsed
object is only looked at (model, stream, a few types) to route and to refuse bad input."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from ollamux.routing.errors import BadRequest

# Fields whose type the proxy checks, because routing or streaming depends on them.
OLLAMA_TYPES: dict[str, tuple[type, ...]] = {
    "stream": (bool,),
    "messages": (list,),
    "options": (dict,),
    "prompt": (str,),
}
_TYPE_NAMES = {bool: "a boolean", list: "an array", dict: "an object", str: "a string"}


async def read_json(request: Request) -> tuple[bytes, dict[str, Any]]:
    body = await request.body()
    return body, parse_object(body)


def parse_object(body: bytes, types: dict[str, tuple[type, ...]] | None = None) -> dict[str, Any]:
    """The JSON object in ``body``; ``types`` (default: Ollama's) are the fields whose type
    is checked, because routing or streaming depends on them."""
    if not body:
        raise BadRequest("missing request body")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_kind(doc)}")
    for name, allowed in (OLLAMA_TYPES if types is None else types).items():
        value = doc.get(name)
        if value is not None and not isinstance(value, allowed):
            raise BadRequest(f"{name} must be {_TYPE_NAMES[allowed[0]]}, not {_kind(value)}")
    return doc


def require_model(doc: dict[str, Any], field: str = "model") -> str:
    model = doc.get(field)
    if model is None or model == "":
        raise BadRequest(f"{field} is required")
    if not isinstance(model, str):
        raise BadRequest(f"{field} must be a string, not {_kind(model)}")
    return model


def kind_of(value: object) -> str:
    """How an error names a JSON value's type."""
    return _kind(value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
