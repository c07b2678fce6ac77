"""What one client request may take: its headers, its body, and a place among the
requests served at once (``limits.*``). Each refusal is an answer in the API's shape:

- headers larger than ``max_header_bytes``: 431;
- a body larger than ``max_body_bytes``: 413, at once from ``Content-Length``, before a
  byte of the body is read; a chunked body is counted as it arrives and refused the
  moment it passes the limit (never read whole first). The connection is closed after;
- more than ``max_connections`` requests in progress (a stream counts until its last
  byte), or more than ``max_requests_per_client`` from one client address: 503 with
  ``Retry-After``. The client address is the peer's, or — when the peer is a trusted
  proxy (``limits.trusted_proxies``) — the one its ``X-Forwarded-For`` names; a trusted
  peer's own requests (no ``X-Forwarded-For``) are not capped per client.

``verdict()`` decides from the request head; the middleware reads the head in one pass
and wraps ``receive`` only for bodies without a length. Responses are never wrapped.
The limits are read from the running config, so a reload changes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollamux.routing.api.connections import client_address, is_trusted, trusted_networks
from ollamux.routing.errors import HeadersTooLarge, NoCapacity, PayloadTooLarge, ProxyError
from ollamux.routing.settings import Limits

log = logging.getLogger("ollamux.limits")

Render = Callable[[Request, ProxyError], Response]


def verdict(
    header_bytes: int, content_length: int | None, in_flight: int, limits: Limits
) -> ProxyError | None:
    """The refusal a request's head earns, or None to serve it."""
    if header_bytes > limits.max_header_bytes:
        return HeadersTooLarge(
            f"request headers of {header_bytes} bytes are over the limit of "
            f"{limits.max_header_bytes} (limits.max_header_bytes)"
        )
    if content_length is not None and content_length > limits.max_body_bytes:
        return too_large(limits.max_body_bytes, f"of {content_length} bytes ")
    if in_flight >= limits.max_connections:
        return NoCapacity(
            f"ollamux is serving its limit of {limits.max_connections} requests at once "
            "(limits.max_connections); retry shortly"
        )
    return None


def too_large(limit: int, size: str = "") -> PayloadTooLarge:
    # The rest of the body is not read: the connection cannot carry another request.
    return PayloadTooLarge(
        f"the request body {size}is over the limit of {limit} bytes (limits.max_body_bytes)",
        headers={"Connection": "close"},
    )


class ClientLimits:
    def __init__(self, app: ASGIApp, limits: Callable[[], Limits], render: Render) -> None:
        self.app = app
        self.limits = limits
        self.render = render
        self.in_flight = 0
        self.per_client: dict[str, int] = {}
        self._networks: tuple[Limits, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = 0
        length: int | None = None
        chunked = False
        forwarded: bytes | None = None
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b"," + value
        limits = self.limits()
        client = self._client(scope, forwarded, limits)
        refusal = verdict(size, length, self.in_flight, limits)
        if refusal is None and client is not None:
            refusal = per_client_verdict(self.per_client.get(client, 0), limits)
        if refusal is not None:
            log.info(
                "%s %s from %s refused: %s",
                scope["method"],
                scope["path"],
                client or "a trusted peer",
                refusal.message,
            )
            await self.render(Request(scope), refusal)(scope, receive, send)
            return
        if chunked and length is None:
            receive = _counted(receive, limits.max_body_bytes)
        self.in_flight += 1
        if client is not None:
            self.per_client[client] = self.per_client.get(client, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if client is not None:
                left = self.per_client[client] - 1
                if left:
                    self.per_client[client] = left
                else:
                    del self.per_client[client]

    def _client(self, scope: Scope, forwarded: bytes | None, limits: Limits) -> str | None:
        """The client address whose requests are counted; None for a trusted peer's own."""
        if self._networks is None or self._networks[0] is not limits:
            self._networks = (limits, trusted_networks(limits))
        networks = self._networks[1]
        peer = scope.get("client")
        host = peer[0] if peer else None
        if forwarded is None and is_trusted(host, networks):
            return None
        return client_address(host, forwarded, networks)


def per_client_verdict(in_flight: int, limits: Limits) -> ProxyError | None:
    if in_flight >= limits.max_requests_per_client:
        return NoCapacity(
            f"this client has its limit of {limits.max_requests_per_client} requests in "
            "progress (limits.max_requests_per_client); retry shortly"
        )
    return None


def _counted(receive: Receive, limit: int) -> Receive:
    """``receive``, refusing the body the moment it passes ``limit`` bytes."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return message

    return counted
