"""Anthropic's Messages API, served for every box: ``POST /v1/messages`` (streamed or
not) and ``POST /v1/messages/count_tokens``, routed holding a slot like the other
inference routes (fair share, priority, conversation affinity, failover, accounting).

A box that serves ``/v1/messages`` itself gets the client's bytes and its answer comes
back unchanged; other boxes get a translation (``backends.translate.anthropic_plan``).
Clients authenticate with ``x-api-key`` or ``Authorization: Bearer`` (``auth.py``: both
are ollamux keys, never forwarded); ``anthropic-version`` and ``anthropic-beta`` go to
the box as they came. Errors take Anthropic's shape (``app.error_response``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from ollamux.backends.translate.anthropic_plan import (
    COUNT_TOKENS,
    MESSAGES,
    for_anthropic_client,
)
from ollamux.routing.api.body import parse_object, require_model
from ollamux.routing.api.forward import proxy
from ollamux.routing.errors import BadRequest

# Only what routing depends on is checked here; the rest is the box's (or the
# translator's) to judge.
ANTHROPIC_TYPES: dict[str, tuple[type, ...]] = {"stream": (bool,), "messages": (list,)}


async def messages(request: Request) -> Any:
    path: str = request.scope["path"]
    body = await request.body()
    doc = parse_object(body, ANTHROPIC_TYPES)
    model = require_model(doc)
    if not doc.get("messages"):
        raise BadRequest("messages: Field required (a non-empty array)")
    if path == MESSAGES:
        limit = doc.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise BadRequest("max_tokens: Field required (a positive integer)")
    translate = for_anthropic_client
    return await proxy(request, path, model, body, doc, translate, chat=True)


routes: list[BaseRoute] = [
    Route(MESSAGES, messages, methods=["POST"]),
    Route(COUNT_TOKENS, messages, methods=["POST"]),
]
