"""The rest of a current Ollama's routes: each one ollamux does not serve answers 501,
naming the route, in the shape of the API it belongs to (never a bare 404, which would
read as "this is not an Ollama server").

Why not served: account routes (``/api/me``, ``/api/signout``, user keys) and the
experimental web tools act for the account signed in on one box, which a proxy in front
of many cannot choose for the client; ``/api/status`` describes one server;
``/v1/images/generations`` was experimental in Ollama and is gone from its current
routes (``/v1/audio/transcriptions`` is routed: ``routing.api.audio``). The Responses
API's own extras (token counting, compaction) are not Ollama's and not served either.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ollamux.routing.errors import RouteNotImplemented

UNSERVED: tuple[tuple[str, str, str], ...] = (
    ("GET", "/api/status", "it describes one Ollama server; ask a box directly"),
    ("POST", "/api/me", "account sign-in belongs to each box; ask a box directly"),
    ("POST", "/api/signout", "account sign-in belongs to each box; ask a box directly"),
    ("DELETE", "/api/user/keys/{key}", "account keys belong to each box; ask a box directly"),
    ("POST", "/api/experimental/web_search", "it acts for the account signed in on one box"),
    ("POST", "/api/experimental/web_fetch", "it acts for the account signed in on one box"),
    ("GET", "/api/experimental/model-recommendations", "it is experimental in Ollama"),
    ("POST", "/v1/images/generations", "image generation was experimental in Ollama"),
    ("POST", "/v1/responses/input_tokens", "token counting is not served"),
    ("POST", "/v1/responses/compact", "compaction needs stored responses"),
)


def _unserved(method: str, path: str, why: str) -> Route:
    async def endpoint(request: Request) -> Response:
        raise RouteNotImplemented(f"ollamux does not serve {method} {path}: {why}")

    return Route(path, endpoint, methods=[method])


routes: list[BaseRoute] = [_unserved(*entry) for entry in UNSERVED]
