"""ollamux: one Ollama URL in front of many GPU boxes.

The composition root: settings in, a Starlette app out (``create_app``), and the command
line (``main``) that serves it. See README.md and DESIGN.md for the contracts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.errors import MethodNotAllowed, ProxyError, RouteNotFound
from backends.settings import ConfigError, Settings, default_settings, load_settings
from routing import ollama_api, openai_api
from routing.ollama_api import JSON, services
from routing.services import Services

log = logging.getLogger("ollamux")


def create_app(settings: Settings) -> Starlette:
    svc = Services(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = Starlette(
        routes=[
            *ollama_api.routes,
            *openai_api.routes,
            Route("/router/status", router_status, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={
            ProxyError: render_error,
            HTTPException: render_http_error,
            Exception: render_unexpected,
        },
    )
    app.state.services = svc
    return app


async def router_status(request: Request) -> Response:
    return JSON(services(request).board.snapshot())


def error_response(request: Request, exc: ProxyError) -> Response:
    """One error, in the shape of the API the client spoke."""
    content: dict[str, Any]
    if request.url.path.startswith("/v1/"):
        content = {"error": {"message": exc.message, "type": exc.code, "code": exc.status}}
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
        error: ProxyError = MethodNotAllowed(f"method {request.method} not allowed here")
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
        prog="ollamux", description="One Ollama URL in front of many GPU boxes."
    )
    parser.add_argument("--config", help="YAML config (default: ./ollamux.yaml if present)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=12434, help="port to listen on")
    parser.add_argument(
        "--demo", action="store_true", help="serve simulated boxes on loopback (no GPU needed)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.config:
        return load_settings(args.config)
    if Path("ollamux.yaml").is_file():
        return load_settings("ollamux.yaml")
    return default_settings()


async def serve(app: Starlette, host: str, port: int, log_level: str) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # per-request logging costs more than the routing itself
        server_header=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=30,
    )
    await uvicorn.Server(config).serve()


async def run(args: argparse.Namespace, settings: Settings | None) -> None:
    if settings is not None:
        await serve(create_app(settings), args.host, args.port, args.log_level)
        return
    from backends.demo import demo_cluster

    async with demo_cluster() as demo:
        print(f"ollamux demo: open http://{args.host}:{args.port}/router/status", flush=True)
        await serve(create_app(demo), args.host, args.port, args.log_level)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        # A bad config is refused before anything starts listening.
        settings = None if args.demo else settings_from(args)
        import uvloop

        uvloop.run(run(args, settings))
    except ConfigError as exc:
        print(f"ollamux: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
