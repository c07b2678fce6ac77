"""What every API's routes share: the JSON response, the app's services, and ``proxy``,
the one path of an inference request from a handler to the dispatcher and the relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ollamux.backends.relay import Exchange
from ollamux.backends.translate.plans import Routed
from ollamux.routing.affinity import conversation_key
from ollamux.routing.api.services import Services, make_ticket

# How a client's request becomes what each kind of box gets (backends.translate.plans).
Translate = Callable[[str, bytes, dict[str, Any], str, str], Routed]


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def proxy(
    request: Request,
    path: str,
    model: str,
    body: bytes,
    doc: dict[str, Any],
    translate: Translate,
    *,
    chat: bool,
    slot: bool = True,
) -> Exchange:
    """Either API's request, placed and ready to forward: ``translate`` says what each
    kind of box gets; ``chat`` requests have a conversation to keep on its box."""
    svc = services(request)
    key = svc.model_key(model)
    routed = translate(path, body, doc, model, key)
    routed.check(svc.prober.fleet, key)
    conversation = None
    if chat:
        conversation = conversation_key(model, doc, request.headers.get("x-session-id"))
    req = svc.dispatcher.request(key, conversation=conversation, kinds=routed.kinds)
    ticket = make_ticket(request.headers, doc, body, getattr(request.state, "key_name", None))
    return await svc.exchange(
        req,
        model,
        plan=routed.plan,
        headers=request.headers,
        path=path,
        slot=slot,
        conversation=conversation,
        ticket=ticket,
    )
