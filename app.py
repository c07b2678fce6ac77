"""ollamux: one Ollama URL in front of many GPU boxes.

The composition root: settings in, a Starlette app out (``create_app``), and the command
line (``main``) that serves it. README.md has the contracts, docs/architecture.md the
layers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from ollamux.backends.relay import Exchanges
from ollamux.backends.translate.anthropic_response import error_doc
from ollamux.routing.api import admin as admin_api
from ollamux.routing.api import anthropic as anthropic_api
from ollamux.routing.api import audio as audio_api
from ollamux.routing.api import auth, server, surface
from ollamux.routing.api import models as fleet_api
from ollamux.routing.api import ollama as ollama_api
from ollamux.routing.api import openai as openai_api
from ollamux.routing.api import responses as responses_api
from ollamux.routing.api import router as router_api
from ollamux.routing.api.auth import Auth, AuthMiddleware
from ollamux.routing.api.client_limits import ClientLimits
from ollamux.routing.api.reload import Reloader
from ollamux.routing.api.services import Services
from ollamux.routing.clock import Clock
from ollamux.routing.errors import MethodNotAllowed, ProxyError, RouteNotFound
from ollamux.routing.settings import ConfigError, Settings, default_settings, load_settings

log = logging.getLogger("ollamux")


def create_app(
    settings: Settings, config_path: str | Path | None = None, *, clock: Clock | None = None
) -> Starlette:
    """The app for ``settings``; with ``config_path`` it reloads that file on change and on
    SIGHUP. ``clock`` is the scheduler's time (the event loop's unless a test holds it)."""
    svc = Services(settings, clock=clock)
    reloader = Reloader(config_path, svc) if config_path is not None else None
    exchanges = Exchanges()
    client_auth = Auth(lambda: svc.settings.client_keys, limits=lambda: svc.settings.limits)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await svc.start()
        if reloader is not None:
            await reloader.start()
        try:
            yield {"exchanges": exchanges}  # each exchange in flight registers there
        finally:
            if reloader is not None:
                await reloader.stop()
            await svc.stop()

    app = Starlette(
        routes=[
            *ollama_api.routes,
            *fleet_api.routes,
            *openai_api.routes,
            *responses_api.routes,
            *audio_api.routes,
            *anthropic_api.routes,
            *router_api.routes,
            *admin_api.routes,
            *auth.routes,
            *surface.routes,  # last: Ollama's routes ollamux does not serve (501)
        ],
        middleware=[
            *cors(settings),
            Middleware(ClientLimits, limits=lambda: svc.settings.limits, render=error_response),
            Middleware(AuthMiddleware, auth=client_auth, render=error_response),
        ],
        lifespan=lifespan,
        exception_handlers={
            ProxyError: render_error,
            HTTPException: render_http_error,
            Exception: render_unexpected,
        },
    )
    app.state.services = svc
    app.state.reloader = reloader
    app.state.exchanges = exchanges
    app.state.auth = client_auth
    return app


def cors(settings: Settings) -> list[Middleware]:
    """Off unless ``cors.origins`` lists some; outermost, so refusals carry it too."""
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Ollamux-Endpoint", "X-Ollamux-Route", "Retry-After"],
            max_age=600,
        )
    ]


def draining(app: Starlette) -> Callable[[], None]:
    """What a stop signal sets off (the server has stopped accepting): requests in flight
    get ``shutdown.grace`` seconds, then streams end with an error line, the rest 503."""
    grace = app.state.services.settings.shutdown.grace
    exchanges: Exchanges = app.state.exchanges
    reason = (
        f"ollamux is shutting down: the answer was cut after the {grace:g} s grace period "
        "(shutdown.grace)"
    )

    def cut() -> None:
        if count := exchanges.close_all(reason):
            log.warning("shutdown: cut %d request(s) still in flight after %g s", count, grace)

    def begin() -> None:
        log.info("shutting down: %d request(s) in flight get %g s", len(exchanges), grace)
        asyncio.get_running_loop().call_later(grace, cut)

    return begin


def error_response(request: Request, exc: ProxyError) -> Response:
    """One error, in the shape of the API the client spoke."""
    content: dict[str, Any]
    path = request.url.path
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        content = error_doc(exc.status, exc.message)
    elif path.startswith("/v1/"):
        content = {"error": {"message": exc.message, "type": exc.code, "code": exc.status}}
        if exc.param is not None:
            content["error"]["param"] = exc.param
    else:
        content = {"error": exc.message}
    return Response(
        orjson.dumps(content), exc.status, headers=exc.headers, media_type="application/json"
    )


async def render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return error_response(request, exc)


async def render_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        # RFC 9110: a 405 names the methods the route does take.
        error: ProxyError = MethodNotAllowed(
            f"method {request.method} not allowed here", headers=dict(exc.headers or {})
        )
    elif exc.status_code == 404:
        error = RouteNotFound(f"no route {request.url.path}")
    else:
        error = ProxyError(str(exc.detail))
        error.status = exc.status_code
    return error_response(request, error)


async def render_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, ProxyError("internal error in ollamux; see its log"))


# --- command line -------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ollamux",
        description="One Ollama URL in front of many GPU boxes.",
        epilog="ollamux check [--config PATH]: probe every box of a config once and print "
        "what answers (exit 1 when a box does not, 2 when the config is refused).",
    )
    parser.add_argument("--version", action="version", version=f"ollamux {_version()}")
    parser.add_argument(
        "--config",
        help="YAML config (default: ./ollamux.yaml if present, else one Ollama box at "
        "http://127.0.0.1:11434)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 serves the LAN (default: %(default)s)",
    )
    parser.add_argument(
        "--port", type=int, default=12434, help="port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--demo", action="store_true", help="serve simulated boxes on loopback (no GPU needed)"
    )
    parser.add_argument(
        "--no-demo-traffic",
        dest="demo_traffic",
        action="store_false",
        help="with --demo: do not play demo clients against the proxy",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--server",
        default=server.DEFAULT_SERVER,
        choices=server.SERVERS,
        help="the ASGI server, chosen by the bench/ figures; granian needs the extra: "
        "pip install 'ollamux[granian]' (default: %(default)s)",
    )
    return parser.parse_args(argv)


def parse_check_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ollamux check",
        description="Probe every box of a config once; print box, kind, reachable, version, "
        "models and loaded models; exit 1 when a box does not answer as a box of its kind, "
        "2 when the config is refused.",
    )
    parser.add_argument("--config", help="YAML config (default: ./ollamux.yaml if present)")
    return parser.parse_args(argv)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ollamux")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def config_path(args: argparse.Namespace) -> str | None:
    if args.config:
        return str(args.config)
    return "ollamux.yaml" if Path("ollamux.yaml").is_file() else None


def settings_from(args: argparse.Namespace) -> Settings:
    path = config_path(args)
    return load_settings(path) if path is not None else default_settings()


async def serve(app: Starlette, args: argparse.Namespace) -> None:
    settings: Settings = app.state.services.settings
    if app.state.services.shared is not None:  # how other replicas' dashboards list us
        host = socket.gethostname() if args.host in ("0.0.0.0", "::", "") else args.host
        app.state.services.shared.address = f"{host}:{args.port}"
    await server.serve(
        app,
        args.host,
        args.port,
        args.log_level,
        args.server,
        limits=lambda: app.state.services.settings.limits,  # a reload changes them
        grace=settings.shutdown.grace,
        on_stop=draining(app),
    )


def describe_boxes(settings: Settings) -> str:
    return ", ".join(f"{ep.name} ({ep.url}, {ep.kind})" for ep in settings.endpoints)


async def run(args: argparse.Namespace, settings: Settings | None) -> None:
    log.info("listening on http://%s:%d (dashboard: /dashboard)", _host(args.host), args.port)
    if settings is not None:
        await serve(create_app(settings, config_path(args)), args)
        return
    from ollamux.backends.sim.demo import demo_cluster, traffic_url

    traffic = traffic_url(args.host, args.port) if args.demo_traffic else None
    async with demo_cluster(traffic) as demo:
        print(f"ollamux demo: simulated boxes {describe_boxes(demo)}", flush=True)
        print(f"ollamux demo: open http://{args.host}:{args.port}/dashboard", flush=True)
        await serve(create_app(demo), args)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_main(argv: Sequence[str]) -> None:
    """``ollamux check``: exit 0 when every box answers, 1 when one does not, 2 when the
    config is refused."""
    from ollamux.backends.check import check

    args = parse_check_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the table says what the probes found
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"ollamux: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    path = config_path(args)
    print(f"# config: {Path(path).resolve() if path else 'none (one local Ollama box)'}")
    report = asyncio.run(check(settings))
    print(report.table())
    raise SystemExit(0 if report.ok else 1)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        check_main(argv[1:])
    args = parse_args(argv)
    if args.server == "granian" and importlib.util.find_spec("granian") is None:
        # Before the demo's boxes or anything else start, not as a traceback after.
        print(
            "ollamux: --server granian needs granian: pip install 'ollamux[granian]'",
            file=sys.stderr,
        )
        raise SystemExit(2)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM stops gracefully like Ctrl-C, and so exits with status 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        # A bad config is refused before anything starts listening.
        settings = None if args.demo else settings_from(args)
        if settings is not None:
            path = config_path(args)
            source = str(Path(path).resolve()) if path else "none (one local Ollama box)"
            log.info("config: %s; boxes: %s", source, describe_boxes(settings))
        import uvloop

        uvloop.run(run(args, settings))
    except ConfigError as exc:
        print(f"ollamux: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
