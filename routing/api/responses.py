"""OpenAI's Responses API (``POST /v1/responses``), served statelessly like Ollama's.

Routed like every inference route (a slot, fair share, priority, affinity, failover,
accounting); each box gets the client's bytes when it speaks the API and a translation
when it does not (``backends.translate.responses_plan``). Nothing is stored, so what
needs a stored response is refused up front: ``previous_response_id``, ``conversation``
and ``background`` are a 400 naming the field, and reading, deleting or cancelling a
response by id is a 404 that says why. ``store`` is accepted and, as on Ollama, stores
nothing (answers say ``store: false``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from ollamux.backends.translate.responses import stateless_check
from ollamux.backends.translate.responses_plan import RESPONSES, for_responses_client
from ollamux.backends.translate.responses_stream import stream_broken
from ollamux.routing.api.body import parse_object, require_model
from ollamux.routing.api.forward import proxy
from ollamux.routing.errors import ProxyError

TYPES: dict[str, tuple[type, ...]] = {"stream": (bool,)}


class ResponseNotStored(ProxyError):
    status = 404
    code = "not_found_error"


async def create(request: Request) -> Any:
    body = await request.body()
    doc = parse_object(body, TYPES)
    model = require_model(doc)
    stateless_check(doc)
    return await proxy(
        request,
        RESPONSES,
        model,
        body,
        doc,
        for_responses_client,
        chat=True,
        stream_error=stream_broken,
        affinity_doc={"messages": conversation(doc)},
    )


def conversation(doc: dict[str, Any]) -> list[Any]:
    """The request's turns as chat messages, enough for conversation affinity (its first
    system and user turns); nothing here is sent."""
    turns: list[Any] = []
    if isinstance(doc.get("instructions"), str):
        turns.append({"role": "system", "content": doc["instructions"]})
    items = doc.get("input")
    if isinstance(items, str):
        turns.append({"role": "user", "content": items})
    elif isinstance(items, list):
        turns += [i for i in items if isinstance(i, dict) and "role" in i]
    return turns


async def stored(request: Request) -> Any:
    ident = request.path_params["id"]
    raise ResponseNotStored(
        f"response {ident!r} is not stored: ollamux, like Ollama, serves the Responses API "
        "statelessly, so responses cannot be retrieved, listed, cancelled or deleted"
    )


routes: list[BaseRoute] = [
    Route(RESPONSES, create, methods=["POST"]),
    Route(RESPONSES + "/{id}", stored, methods=["GET", "DELETE"]),
    Route(RESPONSES + "/{id}/input_items", stored, methods=["GET"]),
    Route(RESPONSES + "/{id}/cancel", stored, methods=["POST"]),
]
