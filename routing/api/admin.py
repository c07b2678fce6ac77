"""The admin API under /router/: drain and resume a box, preload a model, probe now,
reload the config. Behind the same client auth as everything else.

    POST /router/boxes/{name}/drain    no new requests; those in flight finish
    POST /router/boxes/{name}/resume
    POST /router/preload               {"model": "llama3.2", "boxes": 2 | ["gpu-a", ...]}
    POST /router/refresh               probe every box now
    POST /router/reload                read the config file again (as SIGHUP does)
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ollamux.backends.model_ops.io import load_model
from ollamux.routing.api.body import parse_object, require_model
from ollamux.routing.api.forward import JSON, services
from ollamux.routing.api.services import Services
from ollamux.routing.choose import Tier, rank
from ollamux.routing.errors import BadRequest, RouteNotFound
from ollamux.routing.settings import ConfigError
from ollamux.routing.state import BoxState


async def drain(request: Request) -> Response:
    return _set_draining(request, True)


async def resume(request: Request) -> Response:
    return _set_draining(request, False)


def _set_draining(request: Request, draining: bool) -> Response:
    svc = services(request)
    name = request.path_params["name"]
    if name not in svc.prober.fleet.by_name:
        raise RouteNotFound(f"no box named {name!r}")
    svc.prober.set_draining(name, draining)
    in_flight = sum(n for (box, _m), n in svc.usage.items() if box == name)
    return JSON({"box": name, "draining": draining, "in_flight": in_flight})


async def refresh(request: Request) -> Response:
    svc = services(request)
    await svc.prober.refresh_all()
    return JSON(svc.board.snapshot())


async def reload(request: Request) -> Response:
    reloader = getattr(request.app.state, "reloader", None)
    if reloader is None:
        raise BadRequest("ollamux was started without a config file: nothing to reload")
    try:
        changes = reloader.reload()
    except ConfigError as exc:
        raise BadRequest(f"the config file {reloader.path} was refused: {exc}") from None
    return JSON({"config": str(reloader.path), **changes})


async def preload(request: Request) -> Response:
    """Load a model on N boxes (or the named ones): those holding it already renew their
    keep-alive, the others load it (Ollama: an empty generate; llama-server router mode:
    /models/load)."""
    doc = parse_object(await request.body())
    model = require_model(doc)
    svc = services(request)
    key = svc.model_key(model)
    boxes = _preload_targets(svc, key, doc.get("boxes", 1))
    results = await asyncio.gather(*(load_model(svc, box.name, model) for box in boxes))
    outcome = {r.box: "loaded" if r.ok else f"error: {r.error or r.status}" for r in results}
    failed = [r for r in results if not r.ok]
    body = {"model": model, "boxes": outcome}
    return Response(orjson.dumps(body), 502 if failed else 200, media_type="application/json")


def _preload_targets(svc: Services, key: str, wanted: object) -> list[BoxState]:
    fleet = svc.prober.fleet
    if isinstance(wanted, list):
        if not all(isinstance(n, str) and n in fleet.by_name for n in wanted):
            raise BadRequest(f"boxes must name configured boxes, got {wanted!r}")
        targets = [fleet.by_name[n] for n in wanted]
        lacking = [b.name for b in targets if key not in b.models]
        if lacking:
            raise BadRequest(f"{', '.join(lacking)} do not have model {key!r}")
        return targets
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise BadRequest(f"boxes must be a number >= 1 or a list of box names, got {wanted!r}")
    # The boxes routing would pick to load it (cheapest first), after those holding it.
    req = svc.dispatcher.request(key)
    ranked = rank(fleet, svc.usage, req, lambda: 0.5)
    if not ranked:
        raise RouteNotFound(f"no healthy box has model {key!r}")
    loaded = [c.box for c in ranked if c.loaded]
    free = [c.box for c in ranked if not c.loaded and c.tier is not Tier.SATURATED]
    return (loaded + free)[:wanted]


routes: list[BaseRoute] = [
    Route("/router/boxes/{name}/drain", drain, methods=["POST"]),
    Route("/router/boxes/{name}/resume", resume, methods=["POST"]),
    Route("/router/preload", preload, methods=["POST"]),
    Route("/router/refresh", refresh, methods=["POST"]),
    Route("/router/reload", reload, methods=["POST"]),
]
