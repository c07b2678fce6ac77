"""What every API's routes share: the JSON response, the app's services, and ``proxy``,
the one path of an inference request from a handler to the dispatcher and the relay."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ollamux.backends.relay import Exchange
from ollamux.backends.translate.plans import Routed
from ollamux.routing.affinity import conversation_key
from ollamux.routing.api.services import Services, make_ticket
from ollamux.routing.errors import ProxyError

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
    stream_error: Callable[[ProxyError, bytes], bytes] | None = None,
    affinity_doc: dict[str, Any] | None = None,
) -> Exchange:
    """Any API's request, placed and ready to forward: ``translate`` says what each kind
    of box gets; ``chat`` requests have a conversation to keep on its box (``affinity_doc``
    is the request as Ollama's chat would say it, when the API says it differently);
    ``stream_error`` ends a broken stream in the API's own framing. A cloud model (one its
    Ollama boxes forward to a remote host) takes no local slot."""
    svc = services(request)
    key = svc.model_key(model)
    fleet = svc.prober.fleet
    routed = translate(path, body, doc, model, key)
    kinds = routed.check(fleet, key)
    conversation = None
    if chat:
        session = request.headers.get("x-session-id")
        conversation = conversation_key(model, affinity_doc or doc, session)
    # About four bytes of a request body per prompt token: the estimate's prefill.
    req = svc.dispatcher.request(
        key, conversation=conversation, kinds=kinds, prompt_tokens=len(body) // 4
    )
    if routed.unable is not None:
        unable = routed.unable
        req = replace(req, exclude=frozenset(b.name for b in fleet.boxes if unable(b)))
    slot = slot and not fleet.remote(key)
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
        stream_error=stream_error,
    )
