"""OpenAI's API, served for every box: chat completions, completions and embeddings are
routed holding a slot, like Ollama's inference routes; ``/v1/models`` is every box's
models merged. A box that speaks OpenAI's API gets the client's bytes; other Ollama
boxes get a translation (``backends.translate.plans``). Errors are OpenAI's shape (the
app's error handler renders by path)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ollamux.backends.translate.models import openai_models
from ollamux.backends.translate.plans import for_openai_client
from ollamux.routing.api.body import parse_object, require_model
from ollamux.routing.api.forward import JSON, proxy, services
from ollamux.routing.api.services import Services
from ollamux.routing.choose import unavailable_reason
from ollamux.routing.errors import BadRequest, ModelNotFound, NoCapacity
from ollamux.routing.state import Fleet

# OpenAI's prompt may be a list (of strings or tokens): only these types are checked.
OPENAI_TYPES: dict[str, tuple[type, ...]] = {"stream": (bool,)}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"


async def inference(request: Request) -> Any:
    path: str = request.scope["path"]  # not request.url: building a URL costs 5 us
    body, doc = await read_body(request, path)
    model = require_model(doc)
    return await proxy(request, path, model, body, doc, for_openai_client, chat=path != EMBEDDINGS)


async def read_body(request: Request, path: str) -> tuple[bytes, dict[str, Any]]:
    """The client's bytes (forwarded as they came) and the object they hold, checked only
    where routing or translation depends on it."""
    body = await request.body()
    doc = parse_object(body, OPENAI_TYPES)
    if path == CHAT and not isinstance(doc.get("messages"), list):
        raise BadRequest("messages must be an array")
    if path == COMPLETIONS and "prompt" not in doc:
        raise BadRequest("prompt is required")
    if path == EMBEDDINGS and "input" not in doc:
        raise BadRequest("input is required")
    return body, doc


async def models(request: Request) -> Response:
    return JSON({"object": "list", "data": openai_models(services(request).prober.fleet.boxes)})


async def model(request: Request) -> Response:
    asked = request.path_params["model"]
    svc = services(request)
    key = svc.model_key(asked)
    entry = _find(svc.prober.fleet, key, svc)
    if entry is None:
        await svc.prober.refresh_models()  # a model pulled since the last probe
        entry = _find(svc.prober.fleet, key, svc)
    if entry is None:
        fleet = svc.prober.fleet
        if not any(b.reachable for b in fleet.boxes):  # it may be on a box that is down
            why = unavailable_reason(fleet, key)
            raise NoCapacity(f"no box is reachable to look up '{asked}': {why}", retry_after=5)
        raise ModelNotFound(f"The model '{asked}' does not exist")
    return JSON({**entry, "id": asked})


def _find(fleet: Fleet, key: str, svc: Services) -> dict[str, Any] | None:
    return next((m for m in openai_models(fleet.boxes) if svc.model_key(m["id"]) == key), None)


routes: list[BaseRoute] = [
    Route(CHAT, inference, methods=["POST"]),
    Route(COMPLETIONS, inference, methods=["POST"]),
    Route(EMBEDDINGS, inference, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model:path}", model, methods=["GET"]),
]
