"""What the simulated Ollama box's HTTP handlers share (``backends.sim.ollama`` serves
inference and metadata, ``backends.sim.store`` the model store): Ollama's name rule,
JSON bodies in and out, and errors in Ollama's shape, raised as ``ApiError`` and
rendered in one place (``guard``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NDJSON = {"Content-Type": "application/x-ndjson"}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def normalize(name: str) -> str:
    """Ollama's rule: a name without a tag means ":latest" (the tag follows the last "/")."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


async def read_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        raise ApiError(400, "missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, str(exc)) from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def model_of(body: dict[str, Any], *, legacy: bool = False) -> str:
    model = body.get("model") or (body.get("name") if legacy else None)
    if not model or not isinstance(model, str):
        raise ApiError(400, "model is required")
    return model


def guard(handler: Handler) -> Handler:
    """Render an ApiError in Ollama's shape; one place, not one try per handler."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)

    return guarded
