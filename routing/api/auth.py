"""Client auth: named API keys, and browser sessions for the dashboard.

With ``auth.api_keys`` set, every request but ``GET|HEAD /`` and the login page presents
a key, as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``. The dashboard's page, its
feed and ``/metrics`` also take the session cookie that ``POST /router/login`` sets:
HttpOnly, SameSite=Strict, holding a random token that maps to the key's name on the
server (never the key itself; it is not in a URL nor in the browser's storage either).

``access()`` is the decision, a pure function of what the request presents; the
middleware gathers that in one pass over the headers and acts on it. Keys are compared
as SHA-256 digests with ``hmac.compare_digest``, every configured key every time, so the
time taken says nothing about which key nearly matched. The key's name goes into
``request.state.key_name`` (fair share counts users by it) and the debug log.

Beyond a valid key (``auth_checks``): a client that sends wrong keys backs off (429,
logged), a cookie-authorized write must come from this origin as JSON (CSRF), and the
routes that manage the fleet take an ``admin: true`` key (403 otherwise).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ollamux.routing.api import STATIC
from ollamux.routing.api.auth_checks import SAFE_METHODS, Throttle, cross_site, manages
from ollamux.routing.api.connections import Network, client_address, trusted_networks
from ollamux.routing.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ProxyError,
    TooManyRequests,
    Unauthorized,
)
from ollamux.routing.settings import ClientKey, Limits

log = logging.getLogger("ollamux.auth")

COOKIE = "ollamux_session"
SESSION_TTL = 12 * 3600.0  # seconds a dashboard login lasts
MAX_SESSIONS = 10_000  # the oldest go first beyond this
_LOGIN_MAX = 4096  # bytes of a login body
_LOGIN_PAGE = STATIC / "login.html"
_LOGIN_CSP = (
    "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
# Reachable without a key: the Ollama liveness check, and what it takes to log in.
_OPEN = frozenset(
    {
        ("GET", "/"),
        ("HEAD", "/"),
        ("GET", "/login"),
        ("HEAD", "/login"),
        ("GET", "/static/login.css"),
        ("POST", "/router/login"),
        ("POST", "/router/logout"),
    }
)
# Where the session cookie stands in for a key: the dashboard and what it reads.
_COOKIE_PAGES = frozenset({"/dashboard", "/metrics"})
_COOKIE_TREES = ("/router/", "/static/")

Render = Callable[[Request, ProxyError], Response]


class Access(enum.Enum):
    OPEN = "open"  # no key needed here
    GRANTED = "granted"
    DENIED = "denied"  # 401 in the API's shape
    LOGIN = "login"  # a browser asking for a dashboard page: 303 to the login form


def access(
    method: str, path: str, key_name: str | None, session_name: str | None, wants_html: bool
) -> Access:
    """What to do with a request, given the name of the key it presented (None: no valid
    key), the name behind its session cookie (None: no valid session), and whether it
    asks for HTML (a browser navigating)."""
    if (method, path) in _OPEN:
        return Access.OPEN
    if key_name is not None:
        return Access.GRANTED
    if cookie_path(path):
        if session_name is not None:
            return Access.GRANTED
        if method == "GET" and wants_html:
            return Access.LOGIN
    return Access.DENIED


class Keys:
    """The configured client keys, as (digest, name) pairs."""

    def __init__(self, keys: Sequence[ClientKey]) -> None:
        self._digests = tuple((_digest(k.key.encode()), k.name) for k in keys)
        self.names = frozenset(k.name for k in keys)
        self.admins = frozenset(k.name for k in keys if k.admin)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def name_of(self, presented: bytes) -> str | None:
        digest = _digest(presented)
        found = None
        for known, name in self._digests:  # no early exit: constant time over the keys
            if hmac.compare_digest(digest, known):
                found = name
        return found


class Sessions:
    """Dashboard logins: a random token (the cookie) -> the name of the key that logged
    in, until it expires. Only digests of tokens are kept."""

    def __init__(
        self, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._live: dict[bytes, tuple[str, float]] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._live)

    def open(self, name: str) -> str:
        now = self._clock()
        for digest, (_, expires) in list(self._live.items()):
            if expires > now and len(self._live) < MAX_SESSIONS:
                break
            del self._live[digest]
        token = secrets.token_urlsafe(32)
        self._live[_digest(token.encode())] = (name, now + self.ttl)
        return token

    def name_of(self, token: bytes) -> str | None:
        entry = self._live.get(_digest(token))
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def close(self, token: bytes) -> None:
        self._live.pop(_digest(token), None)

    def keep(self, names: frozenset[str]) -> None:
        """End the sessions of keys no longer configured."""
        for digest, (name, _) in list(self._live.items()):
            if name not in names:
                del self._live[digest]


class Auth:
    """One app's keys and sessions, shared by the middleware and the login routes. The
    keys are read from the running config, so a reload adds or revokes keys (ending the
    sessions a revoked key opened) and switches auth on or off."""

    def __init__(
        self,
        current: Callable[[], Sequence[ClientKey]],
        sessions: Sessions | None = None,
        limits: Callable[[], Limits] = Limits,
    ) -> None:
        self._current = current
        self._source: Sequence[ClientKey] = ()
        self._keys = Keys(())
        self.sessions = sessions or Sessions()
        self.throttle = Throttle()
        self._limits = limits
        self._networks: tuple[Limits, tuple[Network, ...]] | None = None

    def client(self, scope: Scope) -> str:
        """Who is asking, for the failed-auth back-off (X-Forwarded-For from trusted
        proxies, as the per-client limits count)."""
        limits = self._limits()
        if self._networks is None or self._networks[0] is not limits:
            self._networks = (limits, trusted_networks(limits))
        forwarded = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b"," + value
        peer = scope.get("client")
        return client_address(peer[0] if peer else None, forwarded, self._networks[1])

    def refused(self, scope: Scope) -> TooManyRequests | None:
        """A 429 for a client in its back-off after failed keys, else None."""
        wait = self.throttle.wait(self.client(scope))
        if wait <= 0:
            return None
        return TooManyRequests(
            f"too many failed API keys from this client: wait {math.ceil(wait)} s",
            retry_after=math.ceil(wait),
        )

    def failed(self, scope: Scope, how: str) -> None:
        client = self.client(scope)
        count = self.throttle.failed(client)
        log.warning(
            "auth failed from %s (%s): %d in a row%s",
            client,
            how,
            count,
            f", backing off {self.throttle.wait(client):g} s"
            if count >= self.throttle.free
            else "",
        )

    @property
    def keys(self) -> Keys:
        source = self._current()
        if source is not self._source:
            self._source, self._keys = source, Keys(source)
            self.sessions.keep(self._keys.names)
        return self._keys


class AuthMiddleware:
    def __init__(self, app: ASGIApp, auth: Auth, render: Render) -> None:
        self.app = app
        self.auth = auth
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self.auth.keys
        if not keys or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = cookie = None
        html = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                key = _bearer(value) or key
            elif name == b"x-api-key":
                key = key or value.strip()
            elif name == b"cookie":
                cookie = value
            elif name == b"accept":
                html = b"text/html" in value
        path, method = scope["path"], scope["method"]
        if key and (method, path) not in _OPEN:
            throttled = self.auth.refused(scope)
            if throttled is not None:  # not even checked: guessing costs time
                await self.render(Request(scope), throttled)(scope, receive, send)
                return
        key_name = keys.name_of(key) if key else None
        session_name = None
        if key_name is None and cookie is not None and cookie_path(path):
            token = session_token(cookie)
            session_name = self.auth.sessions.name_of(token) if token else None
        verdict = access(method, path, key_name, session_name, html)
        refusal: ProxyError | None = None
        if verdict is Access.GRANTED:
            name = key_name or session_name
            if key_name is not None:
                self.auth.throttle.succeeded(self.auth.client(scope))
            elif method not in SAFE_METHODS:
                refusal = cross_site(scope)
            if refusal is None and manages(method, path) and name not in keys.admins:
                refusal = Forbidden(
                    f"{method} {path} manages the fleet: it takes a key with admin: true "
                    f"(key {name} has none)"
                )
            if refusal is None:
                scope.setdefault("state", {})["key_name"] = name
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s %s: key %s", method, path, name)
        elif verdict is Access.LOGIN:
            await RedirectResponse(_url(scope, "/login"), 303)(scope, receive, send)
            return
        elif verdict is Access.DENIED:
            if key:
                self.auth.failed(scope, f"a wrong API key on {method} {path}")
            refusal = Unauthorized(
                "the API key is not valid" if key else _MISSING,
                headers={"WWW-Authenticate": 'Bearer realm="ollamux"'},
            )
        if refusal is not None:
            await self.render(Request(scope), refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


_MISSING = "an API key is required: send it as Authorization: Bearer KEY (or x-api-key: KEY)"


def cookie_path(path: str) -> bool:
    return path in _COOKIE_PAGES or path.startswith(_COOKIE_TREES)


def _bearer(value: bytes) -> bytes | None:
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip() or None


def session_token(cookie_header: bytes) -> bytes | None:
    """This app's session token from a ``Cookie`` header, if any."""
    prefix = COOKIE.encode() + b"="
    for part in cookie_header.split(b";"):
        part = part.strip()
        if part.startswith(prefix):
            return part[len(prefix) :] or None
    return None


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _url(scope: Scope, path: str) -> str:
    root: str = scope.get("root_path", "")
    return root + path


# --- the login page and its endpoints ------------------------------------------------


async def login_page(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    if not auth.keys:  # nothing to log in to
        return RedirectResponse(_url(request.scope, "/dashboard"), 303)
    page = _LOGIN_PAGE.read_text(encoding="utf-8")
    if "failed" in request.query_params:
        page = page.replace('class="failed" hidden>', 'class="failed">')
    headers = {"Content-Security-Policy": _LOGIN_CSP, "Cache-Control": "no-store"}
    return HTMLResponse(page, headers=headers)


async def login(request: Request) -> Response:
    """The login form (``key=...``, answered with redirects) or JSON (``{"key": ...}``,
    answered with JSON): a right key opens a session and sets its cookie."""
    auth: Auth = request.app.state.auth
    throttled = auth.refused(request.scope)
    if throttled is not None:
        raise throttled
    form = not request.headers.get("content-type", "").startswith("application/json")
    key = _presented_key(await _small_body(request), form)
    name = auth.keys.name_of(key.encode()) if key else None
    if name is None:
        auth.failed(request.scope, "a wrong key at the dashboard's login")
        if form:
            return RedirectResponse(_url(request.scope, "/login?failed"), 303)
        raise Unauthorized("the API key is not valid")
    auth.throttle.succeeded(auth.client(request.scope))
    token = auth.sessions.open(name)
    log.info("dashboard login with key %s", name)
    response: Response
    if form:
        response = RedirectResponse(_url(request.scope, "/dashboard"), 303)
    else:
        response = Response(orjson.dumps({"name": name}), media_type="application/json")
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(auth.sessions.ttl),
        path=_url(request.scope, "/"),
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    token = session_token(request.headers.get("cookie", "").encode("latin-1"))
    if token:
        auth.sessions.close(token)
    response: Response
    if "text/html" in request.headers.get("accept", ""):
        response = RedirectResponse(_url(request.scope, "/login"), 303)
    else:
        response = Response(status_code=204)
    response.delete_cookie(COOKIE, path=_url(request.scope, "/"), httponly=True, samesite="strict")
    return response


async def _small_body(request: Request) -> bytes:
    """The login's body, refused (413) the moment it passes ``_LOGIN_MAX`` bytes: never
    read whole first, whatever its ``Content-Length`` says (or does not)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > _LOGIN_MAX:
        raise _login_too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOGIN_MAX:
            raise _login_too_large()
    return bytes(body)


def _login_too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a login is a key, not a document (over {_LOGIN_MAX} bytes)",
        headers={"Connection": "close"},
    )


def _presented_key(body: bytes, form: bool) -> str | None:
    if form:
        values = parse_qs(body.decode("utf-8", "replace")).get("key", [])
        return values[0] if values else None
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from exc
    key = doc.get("key") if isinstance(doc, dict) else None
    return key if isinstance(key, str) and key else None


routes: list[BaseRoute] = [
    Route("/login", login_page, methods=["GET"]),
    Route("/router/login", login, methods=["POST"]),
    Route("/router/logout", logout, methods=["POST"]),
]
