"""The proxy's own endpoints: its health, live feed, statistics, Prometheus metrics and
the dashboard that shows them (``/router/status`` is served by app.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ollamux.routing.api import STATIC
from ollamux.routing.api.ollama import JSON
from ollamux.routing.api.services import Services
from ollamux.routing.observe.events import events_endpoint
from ollamux.routing.observe.metrics import metrics_endpoint

# The dashboard loads nothing from elsewhere and runs no inline script.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def health(request: Request) -> Response:
    """200 while at least one box can serve (healthy, or degraded but answering)."""
    snapshot = _services(request).board.snapshot()
    up = [ep["name"] for ep in snapshot["endpoints"] if ep["health"] in ("healthy", "degraded")]
    return JSON({"status": "ok" if up else "down", "boxes": up}, 200 if up else 503)


async def stats(request: Request) -> Response:
    svc = _services(request)
    return JSON(svc.stats.view(svc.board.snapshot()))


async def dashboard(request: Request) -> Response:
    return FileResponse(
        STATIC / "index.html",
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
    )


routes: list[BaseRoute] = [
    Route("/router/health", health, methods=["GET"]),
    Route("/router/events", events_endpoint, methods=["GET"]),
    Route("/router/stats", stats, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/dashboard", dashboard, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
