"""Auth, round two: the dashboard cookie cannot be ridden cross-site (CSRF), guessing keys
costs time and is logged, and only ``admin: true`` keys may manage the fleet."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.api.auth import COOKIE, Throttle
from ollamux.routing.settings import parse_settings
from tests.conftest import Cluster, run_cluster

M = "llama3.2"
ADMIN = "admin-key-0123456789abcdef"
USER = "user-key-fedcba9876543210"
KEYS = {
    "api_keys": [
        {"name": "ops", "key": ADMIN, "admin": True},
        {"name": "user", "key": USER},
    ]
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def fleet() -> AsyncIterator[Cluster]:
    async with run_cluster(SimConfig(name="a", preloaded=[M]), auth=KEYS) as c:
        yield c


async def _cookie(c: Cluster, key: str) -> dict[str, str]:
    ok = await c.http.post("/router/login", json={"key": key})
    assert ok.status_code == 200
    return {"cookie": f"{COOKIE}={ok.cookies[COOKIE]}"}


# --- 8: CSRF ---------------------------------------------------------------------------


async def test_a_cookie_authorized_post_from_another_origin_is_refused() -> None:
    async with fleet() as c:
        jar = await _cookie(c, ADMIN)
        own = c.url
        attacks = [
            {**jar, "origin": "http://127.0.0.1:8080", "content-type": "application/json"},
            {**jar, "sec-fetch-site": "same-site", "content-type": "application/json"},
            {**jar, "content-type": "application/x-www-form-urlencoded"},  # a form, no Origin
            {**jar, "origin": own, "content-type": "text/plain"},
        ]
        for headers in attacks:
            resp = await c.http.post("/router/boxes/a/drain", headers=headers, content=b"{}")
            assert resp.status_code == 403, (headers, resp.text)
            assert "error" in resp.json()
        status = (await c.http.get("/router/status", headers=jar)).json()
        assert not status["endpoints"][0].get("draining")
        # The same request from the dashboard's own origin, as JSON, is served.
        same = {**jar, "origin": own, "sec-fetch-site": "same-origin"}
        ok = await c.http.post("/router/boxes/a/drain", headers=same, json={})
        assert ok.status_code == 200, ok.text
        # A key (not a cookie) is no CSRF risk: scripts post as they like.
        resumed = await c.http.post("/router/boxes/a/resume", headers=bearer(ADMIN))
        assert resumed.status_code == 200


# --- 9: key guessing -------------------------------------------------------------------


def test_the_throttle_backs_off_after_a_few_failures_and_forgives_a_success() -> None:
    now = [0.0]
    throttle = Throttle(free=3, backoff=1.0, max_backoff=8.0, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.wait("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    assert throttle.wait("1.2.3.4") == 1.0
    assert throttle.wait("5.6.7.8") == 0  # per client
    now[0] = 1.0
    assert throttle.wait("1.2.3.4") == 0
    throttle.failed("1.2.3.4")
    assert throttle.wait("1.2.3.4") == 2.0  # doubles
    now[0] = 100.0
    throttle.succeeded("1.2.3.4")
    assert throttle.wait("1.2.3.4") == 0


@pytest.mark.parametrize("via", ["login", "bearer"])
async def test_guessing_keys_gets_429_and_a_log_line(
    via: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ollamux.auth")
    async with fleet() as c:
        codes = []
        for i in range(200):
            if via == "login":
                resp = await c.http.post("/router/login", json={"key": f"guess-{i}"})
            else:
                resp = await c.http.get("/api/tags", headers=bearer(f"guess-{i}"))
            codes.append(resp.status_code)
        refused = codes.count(429)
        print(f"\n200 wrong keys via {via}: {codes.count(401)} x 401, {refused} x 429")
        assert codes[0] == 401 and refused >= 190
        assert resp.headers.get("retry-after")
        assert any(
            "failed" in r.getMessage() and "127.0.0.1" in r.getMessage() for r in caplog.records
        )
        # Another client is not held back by the guesser.
        other = await c.http.get(
            "/api/tags", headers={**bearer(USER), "x-forwarded-for": "203.0.113.7"}
        )
        assert other.status_code == 200


# --- 10: roles -------------------------------------------------------------------------

MANAGEMENT = [
    ("POST", "/router/boxes/a/drain", {}),
    ("POST", "/router/refresh", {}),
    ("POST", "/router/reload", {}),
    ("POST", "/router/preload", {"model": M}),
    ("POST", "/api/pull", {"model": M, "stream": False}),
    ("DELETE", "/api/delete", {"model": M}),
    ("POST", "/api/copy", {"source": M, "destination": "x"}),
    ("POST", "/api/create", {"model": "x", "from": M, "stream": False}),
    ("POST", "/api/push", {"model": M, "stream": False}),
]


async def test_only_admin_keys_may_manage() -> None:
    async with fleet() as c:
        jar = await _cookie(c, USER)
        for method, path, doc in MANAGEMENT:
            # The cookie opens /router/* only (never the Ollama API): try it there.
            ways = [bearer(USER)] + ([{**jar, "origin": c.url}] if "/router/" in path else [])
            for headers in ways:
                resp = await c.http.request(method, path, headers=headers, json=doc)
                assert resp.status_code == 403, (method, path, resp.text)
                assert "admin" in resp.text
        # The user's key still uses the APIs and reads the router.
        assert (await c.http.get("/api/tags", headers=bearer(USER))).status_code == 200
        assert (await c.http.get("/router/status", headers=bearer(USER))).status_code == 200
        ok = await c.http.post("/router/refresh", headers=bearer(ADMIN))
        assert ok.status_code == 200


def test_admin_is_a_boolean() -> None:
    raw: dict[str, Any] = {
        "endpoints": ["http://127.0.0.1:1"],
        "auth": {"api_keys": [{"name": "a", "key": "k", "admin": "yes"}]},
    }
    with pytest.raises(Exception, match=r"auth.api_keys\[0\].admin"):
        parse_settings(raw)
    raw["auth"]["api_keys"][0]["admin"] = True
    assert parse_settings(raw).client_keys[0].admin
