"""Ollama's API, served for many boxes as if they were one."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ollamux.backends.model_ops.fleet import is_unload
from ollamux.backends.translate.models import find_tag
from ollamux.backends.translate.models import show as show_card
from ollamux.backends.translate.plans import for_ollama_client
from ollamux.routing.api import models as fleet_api
from ollamux.routing.api.body import read_json, require_model
from ollamux.routing.api.forward import JSON, proxy, services
from ollamux.routing.choose import unavailable_reason
from ollamux.routing.errors import NoCapacity
from ollamux.routing.state import Fleet, canonical_model, version_key


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def inference(request: Request) -> Any:
    """chat, generate, embed, embeddings: routed to a box and holding one of its slots."""
    return await _forward(request, slot=True)


async def show(request: Request) -> Any:
    """Model details: any Ollama box that has the model can answer; takes no slot. A
    model only other kinds of box serve gets a minimal answer from its card."""
    _, doc = await read_json(request)
    svc = services(request)
    key = svc.model_key(require_model(doc, "model" if "model" in doc else "name"))
    fleet = svc.prober.fleet
    if not any(b.kind == "ollama" and b.routable and key in b.models for b in fleet.boxes):
        tag = next((t for b in fleet.boxes if b.routable and (t := find_tag(b, key))), None)
        if tag is not None:
            return JSON(show_card(tag))
    return await _forward(request, slot=False)


async def _forward(request: Request, *, slot: bool) -> Any:
    body, doc = await read_json(request)
    # /api/show still accepts the older "name" field.
    model = require_model(doc, "model" if "model" in doc or slot else "name")
    path: str = request.scope["path"]  # not request.url: building a URL costs 5 us
    if path in ("/api/chat", "/api/generate") and is_unload(path == "/api/chat", doc):
        return await fleet_api.unload(request, doc, model)  # everywhere it is loaded
    chat = path in ("/api/chat", "/api/generate")
    return await proxy(request, path, model, body, doc, for_ollama_client, chat=chat, slot=slot)


async def tags(request: Request) -> Response:
    return JSON({"models": merged_tags(services(request).prober.fleet)})


async def ps(request: Request) -> Response:
    fleet = services(request).prober.fleet
    # A model loaded on two boxes is two rows: each says its box, in a field Ollama's
    # clients ignore (the official client and `ollama ps` parse the rest as ever).
    return JSON(
        {
            "models": [
                {**m, "ollamux_endpoint": box.name}
                for box in fleet.boxes
                if box.routable
                for m in box.running
            ]
        }
    )


async def version(request: Request) -> Response:
    """The oldest version in the fleet; with no box reachable there is none to tell (a
    503 saying why, not a made-up version a client would trust)."""
    fleet = services(request).prober.fleet
    if not any(b.reachable for b in fleet.boxes):
        raise NoCapacity(f"no box is reachable: {unavailable_reason(fleet, '')}", retry_after=5)
    return JSON({"version": lowest_version(fleet)})


def merged_tags(fleet: Fleet) -> list[Any]:
    """Every model some box has listed, once (the first box in config order wins). A box
    that is down keeps its models here: clients see them, and a request for one gets a
    503 that says why, not a 404 that says to pull it."""
    seen: set[str] = set()
    models = []
    for box in fleet.boxes:
        for entry in box.tags:
            name = canonical_model(entry["name"])
            if name not in seen:
                seen.add(name)
                models.append(entry)
    return models


def lowest_version(fleet: Fleet) -> str:
    """The oldest Ollama in the fleet: clients may only use what every box supports."""
    versions = [b.version for b in fleet.boxes if b.version and b.kind == "ollama"]
    return min(versions, key=version_key) if versions else "0.0.0"


routes: list[BaseRoute] = [
    Route("/", root, methods=["GET"]),
    Route("/api/chat", inference, methods=["POST"]),
    Route("/api/generate", inference, methods=["POST"]),
    Route("/api/embed", inference, methods=["POST"]),
    Route("/api/embeddings", inference, methods=["POST"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
]
