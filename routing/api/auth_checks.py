"""What a request must show beyond a valid key: the checks the auth middleware applies.

- ``Throttle``: failed keys per client; after ``FREE_FAILURES`` a back-off (429) during
  which that client's keys are not even checked, so guessing costs time.
- ``cross_site``: a write authorized by the dashboard's cookie must come from ollamux's
  own origin, as JSON (CSRF; SameSite does not cover another port of the same host).
- ``manages``: the routes that manage the fleet, for ``admin: true`` keys only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import Scope

from ollamux.routing.errors import Forbidden

FREE_FAILURES = 5  # failed keys a client may send before it must wait
MAX_THROTTLED = 100_000  # clients whose failures are remembered
FORGET_AFTER = 600.0  # s after its back-off ends that a quiet client is forgotten first
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CSRF_SITES = frozenset({b"same-origin", b"none"})
# Managing the fleet takes an ``admin: true`` key (or its session).
_MANAGE_EXACT = frozenset(
    {
        ("POST", "/router/preload"),
        ("POST", "/router/refresh"),
        ("POST", "/router/reload"),
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
    }
)


class Throttle:
    """Failed authentications per client: ``free`` are free, then each costs a back-off
    (``backoff`` seconds, doubling up to ``max_backoff``) during which that client's keys
    are refused (429) unchecked. A success forgets the client's failures."""

    def __init__(
        self,
        free: int = FREE_FAILURES,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.backoff, self.max_backoff = free, backoff, max_backoff
        self._clock = clock
        self._clients: dict[str, tuple[int, float]] = {}  # failures, back-off until

    def wait(self, client: str) -> float:
        entry = self._clients.get(client)
        return 0.0 if entry is None else max(0.0, entry[1] - self._clock())

    def failed(self, client: str) -> int:
        now = self._clock()
        if len(self._clients) >= MAX_THROTTLED:  # forget the quiet ones first
            quiet = [c for c, (_, until) in self._clients.items() if until + FORGET_AFTER < now]
            for c in quiet or list(self._clients)[: MAX_THROTTLED // 10]:
                del self._clients[c]
        count = self._clients.get(client, (0, 0.0))[0] + 1
        until = now
        if count >= self.free:
            until = now + min(self.max_backoff, self.backoff * 2 ** (count - self.free))
        self._clients[client] = (count, until)
        return count

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def manages(method: str, path: str) -> bool:
    """Whether a request manages the fleet (admin keys only)."""
    if (method, path) in _MANAGE_EXACT:
        return True
    if method == "POST" and path.startswith("/router/boxes/"):
        return path.endswith(("/drain", "/resume"))
    return method == "POST" and path.startswith("/api/blobs/")


def cross_site(scope: Scope) -> Forbidden | None:
    """A cookie-authorized POST must come from this origin, as JSON: a page on another
    origin (another port of the same host included, where SameSite does not help) can
    neither send JSON without CORS consent nor hide its Origin/Sec-Fetch-Site."""
    origin = site = kind = host = None
    for name, value in scope["headers"]:
        if name == b"origin":
            origin = value
        elif name == b"sec-fetch-site":
            site = value
        elif name == b"content-type":
            kind = value
        elif name == b"host":
            host = value
    if site is not None and site not in _CSRF_SITES:
        return Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site.decode('latin-1')})")
    if origin is not None:
        own = f"{scope.get('scheme', 'http')}://".encode() + (host or b"")
        if origin != own:
            return Forbidden(f"cross-origin request refused (Origin: {origin.decode('latin-1')})")
    if kind is None or kind.split(b";")[0].strip().lower() != b"application/json":
        return Forbidden(
            "a request authorized by the dashboard's cookie must be sent as application/json"
        )
    return None
