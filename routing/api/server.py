"""The ASGI server that serves the app: the one place that names one.

Both run in the caller's event loop (so ``--demo`` boxes share it) and honour the app's
lifespan. ``uvicorn`` runs with uvloop + httptools; ``granian`` runs embedded, its HTTP
parsing and socket work on one Rust thread. The default was chosen by measurement
(README "Performance"); the tests serve the app with uvicorn in-process.

Limits and shutdown, per server (README "Security and limits"):

- ``limits.max_header_bytes``: granian's HTTP/1 read buffer (hyper answers 431 beyond);
  with uvicorn, ``routing.api.connections`` counts the head as it arrives and refuses it
  (431) before it is buffered whole; the app's middleware checks the parsed headers too.
- ``limits.head_timeout``, ``body_timeout``, ``max_connections_per_client`` (slow or greedy
  clients): uvicorn runs ``routing.api.connections``' protocol, which enforces them while
  reading. granian has no per-connection hooks: only its own read timeouts apply there.
- ``limits.max_connections``: the app answers 503 beyond it (routing.api.client_limits); the
  server caps open connections, idle keep-alive ones included, at twice that (uvicorn:
  ``limit_concurrency``, a plain 503 and close; granian: ``backpressure``, not accepted).
- On SIGINT/SIGTERM both stop accepting, call ``on_stop`` (the app ends its streams
  ``grace`` seconds later) and wait for the requests in flight; uvicorn cuts whatever is
  left ``_CUT_AFTER`` seconds after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal, get_args

import uvicorn

from ollamux.routing.api.connections import Guard
from ollamux.routing.settings import Limits

ServerName = Literal["uvicorn", "granian"]
SERVERS: tuple[str, ...] = get_args(ServerName)
DEFAULT_SERVER: ServerName = "uvicorn"
_CUT_AFTER = 5.0  # seconds past the grace period before uvicorn cancels what is left


async def serve(
    app: Any,
    host: str,
    port: int,
    log_level: str,
    server: ServerName,
    *,
    limits: Limits | Callable[[], Limits] | None = None,
    grace: float = 30.0,
    on_stop: Callable[[], None] = lambda: None,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM; then stop accepting, tell
    ``on_stop`` and let the requests in flight finish."""
    current = limits if callable(limits) else (lambda: limits or Limits())
    if server == "granian":
        await _granian(app, host, port, log_level, current(), on_stop)
    else:
        config = uvicorn_config(app, current, host=host, port=port, log_level=log_level)
        config.timeout_graceful_shutdown = int(grace + _CUT_AFTER)
        await _Uvicorn(config, on_stop).serve()


class _Uvicorn(uvicorn.Server):
    """uvicorn, telling the app when a signal starts its shutdown."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._loop = asyncio.get_running_loop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:  # called in a signal handler: hand it to the loop
            self._loop.call_soon_threadsafe(self._on_stop)
        super().handle_exit(sig, frame)


def uvicorn_config(
    app: Any,
    limits: Callable[[], Limits],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> uvicorn.Config:
    """uvicorn as ollamux runs it: uvloop, httptools behind the connection guard (read
    deadlines, head size while reading, connections per client), the concurrency cap."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # per-request logging costs more than the routing itself
        server_header=False,
        proxy_headers=False,  # the guard and the app read X-Forwarded-For themselves
        loop="uvloop",
        http=Guard(limits).protocol(),
        ws="none",  # no route upgrades: an Upgrade header must not leave the guard's protocol
        limit_concurrency=2 * limits().max_connections,
    )


async def _granian(
    app: Any, host: str, port: int, log_level: str, limits: Limits, on_stop: Callable[[], None]
) -> None:
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server.embed import Server
    from sse_starlette.sse import AppStatus

    server = Server(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGI,  # with lifespan
        log_level=LogLevels(log_level),
        log_access=False,
        websockets=False,
        backlog=2048,
        backpressure=2 * limits.max_connections,
        http1_settings=HTTP1Settings(max_buffer_size=max(8192, limits.max_header_bytes)),
    )

    halt: Callable[[], None] = server.stop

    def stop() -> None:
        # sse-starlette ends its streams (the dashboard's feed) by hooking uvicorn only.
        AppStatus.should_exit = True
        on_stop()
        halt()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await server.serve()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
