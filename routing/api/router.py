"""The proxy's own endpoints: its status snapshot, explained choices, health, live feed,
statistics, Prometheus metrics and the dashboard that shows them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ollamux.routing.affinity import conversation_key
from ollamux.routing.api import STATIC
from ollamux.routing.api.forward import JSON, services
from ollamux.routing.errors import BadRequest
from ollamux.routing.observe.events import events_endpoint
from ollamux.routing.observe.metrics import metrics_endpoint

# The dashboard loads nothing from elsewhere and runs no inline script.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def health(request: Request) -> Response:
    """200 while at least one box can serve (healthy, or degraded but answering); the
    status says ``degraded`` while the shared state (Redis) is unreachable, since this
    replica still serves, on its share of the slots."""
    snapshot = services(request).board.snapshot()
    up = [ep["name"] for ep in snapshot["endpoints"] if ep["health"] in ("healthy", "degraded")]
    shared = snapshot["shared_state"]
    status = "down" if not up else "ok" if shared["healthy"] else "degraded"
    body: dict[str, object] = {"status": status, "boxes": up}
    if shared["backend"] != "memory":
        body["shared_state"] = shared
    return JSON(body, 200 if up else 503)


async def router_explain(request: Request) -> Response:
    """What would serve ``?model=NAME`` now, and why; nothing is reserved or sent.
    ``&session=ID`` asks as a turn of that conversation (its X-Session-Id)."""
    model = request.query_params.get("model")
    if not model:
        raise BadRequest("model is required: /router/explain?model=NAME")
    svc = services(request)
    session = request.query_params.get("session")
    conversation = conversation_key(model, {}, session) if session else None
    req = svc.dispatcher.request(svc.model_key(model), conversation=conversation, looking=True)
    return JSON(svc.dispatcher.explain(req))


async def router_status(request: Request) -> Response:
    return JSON(services(request).snapshot())


async def stats(request: Request) -> Response:
    svc = services(request)
    return JSON(svc.stats_view(svc.board.snapshot()))


async def dashboard(request: Request) -> Response:
    return FileResponse(
        STATIC / "index.html",
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
    )


routes: list[BaseRoute] = [
    Route("/router/status", router_status, methods=["GET"]),
    Route("/router/explain", router_explain, methods=["GET"]),
    Route("/router/health", health, methods=["GET"]),
    Route("/router/events", events_endpoint, methods=["GET"]),
    Route("/router/stats", stats, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/dashboard", dashboard, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
