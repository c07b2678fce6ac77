"""What one client connection may take from the server while its request is read: the
HTTP/1 protocol uvicorn runs, with the limits applied as bytes arrive (README "Security
and limits"), before anything is buffered or any app code runs.

- A request head must arrive within ``limits.head_timeout`` seconds of its first byte (of
  the connection, for the first request), and its body within ``limits.body_timeout``
  seconds of the head: a client trickling a byte at a time holds a connection that long
  at most (408, or the connection closed if the app already answers).
- A head is refused (431) the moment it passes ``max_header_bytes`` plus
  ``HEAD_SLACK`` (the request line) — counted before it is handed to the parser, so it
  is never buffered whole.
- One client address holds at most ``limits.max_connections_per_client`` connections;
  more are answered 503 and closed at once. Trusted proxies (``limits.trusted_proxies``,
  loopback by default) are exempt: they carry many clients' connections.
- Malformed HTTP (a NUL in a header, a bad ``Content-Length``) gets a 400 in the API's
  shape, chosen by the path when the parser got that far, else Ollama's.

The limits are read from the running config on each connection, so a reload changes them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ollamux.routing.settings import Limits

log = logging.getLogger("ollamux.limits")

HEAD_SLACK = 8192  # bytes of request line and framing on top of max_header_bytes

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(limits: Limits) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in limits.trusted_proxies)


def is_trusted(host: str | None, networks: tuple[Network, ...]) -> bool:
    if host is None:
        return True  # a Unix socket: a local process
    try:
        address: Address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)


def client_address(
    peer: str | None, forwarded_for: bytes | None, networks: tuple[Network, ...]
) -> str:
    """Who a request comes from: the peer, or — when the peer is a trusted proxy — the
    last address in ``X-Forwarded-For`` that is not one of the trusted proxies."""
    if peer is None:
        return "local"
    if forwarded_for is None or not is_trusted(peer, networks):
        return peer
    hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


def error_body(path: bytes, message: str, kind: str = "invalid_request_error") -> bytes:
    """An error in the shape of the API ``path`` belongs to."""
    if path.startswith(b"/v1/messages"):
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    if path.startswith(b"/v1/"):
        return orjson.dumps({"error": {"message": message, "type": kind, "code": None}})
    return orjson.dumps({"error": message})


class Guard:
    """State shared by every connection of one server: its limits and the connections
    each client address holds."""

    def __init__(self, limits: Callable[[], Limits]) -> None:
        self.limits = limits
        self.per_address: Counter[str] = Counter()
        self.refused = 0  # connections refused for the per-address cap
        self.timed_out = 0  # connections closed for a head or body too slow
        self._source: Limits | None = None
        self._networks: tuple[Network, ...] = ()

    @property
    def networks(self) -> tuple[Network, ...]:
        limits = self.limits()
        if limits is not self._source:
            self._source, self._networks = limits, trusted_networks(limits)
        return self._networks

    def protocol(self) -> type[HttpToolsProtocol]:
        """A uvicorn ``http`` protocol class bound to this guard."""
        guard = self

        class Bound(GuardedProtocol):
            _guard = guard

        return Bound


_STATUS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedProtocol(HttpToolsProtocol):
    _guard: Guard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._address: str | None = None
        self._head_bytes = 0
        self._state = "idle"  # idle (no byte of a request yet) | head | body | done
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        limits = guard.limits()
        host = self.client[0] if self.client else None
        if not is_trusted(host, guard.networks):
            assert host is not None
            if guard.per_address[host] >= limits.max_connections_per_client:
                guard.refused += 1
                if guard.refused % 1000 == 1:
                    log.warning(
                        "client %s holds %d connections (limits.max_connections_per_client): "
                        "refusing more (%d refused so far)",
                        host,
                        guard.per_address[host],
                        guard.refused,
                    )
                # Not counted among the server's connections (limit_concurrency) meanwhile.
                self.connections.discard(self)
                self._refuse(
                    503,
                    b"Service Unavailable",
                    f"this address holds its limit of {limits.max_connections_per_client} "
                    "connections (limits.max_connections_per_client)",
                    retry_after=True,
                )
                return
            self._address = host
            guard.per_address[host] += 1
        self._arm(limits.head_timeout, "head")  # a connection that never says a word

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._address is not None:
            counts = self._guard.per_address
            counts[self._address] -= 1
            if counts[self._address] <= 0:
                del counts[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        limit = self._guard.limits().max_header_bytes + HEAD_SLACK
        if self._state in ("idle", "head") and self._head_bytes > limit:
            self._too_large(limit)  # the last chunk took the head past it: parse no more
            return
        super().data_received(data)
        if self._state == "head" and not self.transport.is_closing():
            self._head_bytes += len(data)  # the head is still not complete
            if self._head_bytes > limit:
                self._too_large(limit)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._state, self._head_bytes = "head", 0
        self._arm(self._guard.limits().head_timeout, "head")

    def on_headers_complete(self) -> None:
        self._state = "body"
        self._arm(self._guard.limits().body_timeout, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._state = "done"
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        url = getattr(self, "url", b"") or b""
        self._refuse(400, b"Bad Request", f"malformed HTTP request: {msg}", path=url)

    def _too_large(self, limit: int) -> None:
        self._refuse(
            431,
            _STATUS[431],
            f"the request head is over the limit of {limit} bytes (limits.max_header_bytes)",
        )

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._too_slow, what, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self._guard.timed_out += 1
        if what == "body" and self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # the app is answering: it sees the client gone
            return
        if self._state == "idle":
            self.transport.close()  # connected and said nothing: nothing to answer
            return
        if what == "body" and self.cycle is not None:
            self.cycle.disconnected = True  # the app's body read ends now
            self.cycle.message_event.set()
        key = f"limits.{what}_timeout"
        self._refuse(408, _STATUS[408], f"the request {what} took over {seconds:g} s ({key})")

    def _refuse(
        self,
        status: int,
        reason: bytes,
        message: str,
        *,
        path: bytes = b"",
        retry_after: bool = False,
    ) -> None:
        self._disarm()
        body = error_body(path, message)
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if retry_after:
            head.append(b"retry-after: 1\r\n")
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()
