"""Client auth (``auth.api_keys``), the dashboard's login, CORS, and what a client can
never make ollamux do: see a secret, or fetch a URL it supplied."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.api.auth import COOKIE, Access, Keys, Sessions, access, session_token
from ollamux.routing.settings import ClientKey, ConfigError, parse_settings
from tests.conftest import Cluster, run_cluster, serve_app

M = "llama3.2"
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-fedcba9876543210"
BOX_KEY = "box-key-never-shown-5e6f"
KEYS = {"api_keys": [{"name": "alice", "key": ALICE}, {"name": "bob", "key": BOB}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def guarded(**extra: Any) -> AsyncIterator[Cluster]:
    async with run_cluster(SimConfig(name="a", preloaded=[M]), auth=KEYS, **extra) as c:
        yield c


# --- the decision, as a table --------------------------------------------------------

G, D, OPEN, L = Access.GRANTED, Access.DENIED, Access.OPEN, Access.LOGIN


@pytest.mark.parametrize(
    ("method", "path", "key", "session", "html", "expected"),
    [
        ("GET", "/", None, None, False, OPEN),
        ("HEAD", "/", None, None, False, OPEN),
        ("POST", "/", None, None, False, D),
        ("GET", "/login", None, None, True, OPEN),
        ("GET", "/static/login.css", None, None, False, OPEN),
        ("POST", "/router/login", None, None, False, OPEN),
        ("POST", "/router/logout", None, None, False, OPEN),
        ("POST", "/api/chat", "alice", None, False, G),
        ("POST", "/api/chat", None, None, False, D),
        ("POST", "/api/chat", None, "alice", False, D),  # a cookie is no key for the API
        ("GET", "/api/tags", None, "alice", True, D),
        ("GET", "/v1/models", None, "alice", False, D),
        ("POST", "/v1/chat/completions", "bob", None, False, G),
        ("GET", "/dashboard", None, None, True, L),  # a browser: to the login form
        ("GET", "/dashboard", None, None, False, D),  # an API client: 401
        ("GET", "/dashboard", None, "alice", True, G),
        ("GET", "/dashboard", "alice", None, False, G),
        ("GET", "/dashboardx", None, "alice", True, D),
        ("GET", "/router/status", None, None, False, D),
        ("GET", "/router/status", None, None, True, L),
        ("GET", "/router/status", None, "bob", False, G),
        ("GET", "/router/events", None, "bob", False, G),
        ("POST", "/router/fleet", None, None, True, D),  # only GETs are sent to log in
        ("GET", "/metrics", None, "bob", False, G),
        ("GET", "/metrics", None, None, False, D),
        ("GET", "/static/dashboard.js", None, "bob", False, G),
        ("GET", "/static/dashboard.js", None, None, False, D),
    ],
)
def test_access(
    method: str, path: str, key: str | None, session: str | None, html: bool, expected: Access
) -> None:
    assert access(method, path, key, session, html) is expected


def test_keys_match_whole_keys_only() -> None:
    keys = Keys([ClientKey("alice", ALICE), ClientKey("bob", BOB)])
    assert keys.name_of(ALICE.encode()) == "alice"
    assert keys.name_of(BOB.encode()) == "bob"
    for wrong in (ALICE[:-1], ALICE + "x", ALICE.upper(), "", "alice"):
        assert keys.name_of(wrong.encode()) is None
    assert not Keys([])


def test_sessions_expire_close_and_follow_the_keys() -> None:
    now = [0.0]
    sessions = Sessions(ttl=10.0, clock=lambda: now[0])
    a, b = sessions.open("alice"), sessions.open("bob")
    assert a != b and ALICE not in a
    assert sessions.name_of(a.encode()) == "alice"
    assert sessions.name_of(b"made-up") is None
    sessions.close(a.encode())
    assert sessions.name_of(a.encode()) is None
    sessions.keep(frozenset({"alice"}))  # bob's key was removed from the config
    assert sessions.name_of(b.encode()) is None
    c = sessions.open("alice")
    now[0] = 10.0
    assert sessions.name_of(c.encode()) is None
    sessions.open("alice")  # opening prunes the expired
    assert len(sessions) == 1


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"{COOKIE}=abc", b"abc"),
        (f"theme=dark; {COOKIE}=abc; other=1", b"abc"),
        (f"x{COOKIE}=abc", None),
        (f"{COOKIE}=", None),
        ("theme=dark", None),
    ],
)
def test_session_token_from_cookie_header(header: str, token: bytes | None) -> None:
    assert session_token(header.encode()) == token


# --- config --------------------------------------------------------------------------


def test_keys_as_strings_or_named() -> None:
    eps = ["http://127.0.0.1:1"]
    plain = parse_settings({"endpoints": eps, "auth": {"api_keys": ["k1", "", "k3"]}})
    assert [(k.name, k.key) for k in plain.client_keys] == [("key-1", "k1"), ("key-3", "k3")]
    assert plain.api_keys == ("k1", "k3")
    named = parse_settings({"endpoints": eps, "auth": KEYS})
    assert [k.name for k in named.client_keys] == ["alice", "bob"]
    assert ALICE not in repr(named) and ALICE not in repr(named.client_keys)


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"api_keys": [{"name": "a", "key": ""}]}, r"auth.api_keys\[0\].key must be a non-empty"),
        ({"api_keys": [{"key": "k"}]}, r"auth.api_keys\[0\].name has value None"),
        ({"api_keys": [{"name": "a", "key": "k", "x": 1}]}, r"unknown key auth.api_keys\[0\].x"),
        ({"api_keys": [{"name": "a", "key": "k"}, {"name": "a", "key": "j"}]}, "'a' is used twice"),
        ({"api_keys": ["k", {"name": "b", "key": "k"}]}, "one key is listed twice"),
        ({"api_keys": [3]}, r"auth.api_keys\[0\] must be a string or a mapping"),
    ],
)
def test_bad_keys_are_refused(auth: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"endpoints": ["http://127.0.0.1:1"], "auth": auth})


@pytest.mark.parametrize(
    ("origins", "ok"),
    [
        (["https://app.example.com"], True),
        (["http://127.0.0.1:3000/"], True),
        (["*"], True),
        (["app.example.com"], False),
        (["https://app.example.com/path"], False),
        (["ftp://x"], False),
        ([7], False),
    ],
)
def test_cors_origins_are_origins(origins: list[Any], ok: bool) -> None:
    raw = {"endpoints": ["http://127.0.0.1:1"], "cors": {"origins": origins}}
    if ok:
        assert len(parse_settings(raw).cors_origins) == 1
    else:
        with pytest.raises(ConfigError, match=r"cors.origins\[0\] has value"):
            parse_settings(raw)


# --- over the wire -------------------------------------------------------------------


async def test_api_clients_need_a_key_and_get_401_in_their_api_shape() -> None:
    async with guarded() as c:
        for headers in ({}, bearer("nope")):
            async with ollama.AsyncClient(host=c.url, headers=headers) as client:
                with pytest.raises(ollama.ResponseError) as err:
                    await client.list()
            assert err.value.status_code == 401
            assert "API key" in err.value.error
        missing = await c.http.post("/v1/chat/completions", json={"model": M, "messages": []})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["error"]["type"] == "invalid_api_key"
        async with openai.AsyncOpenAI(
            base_url=f"{c.url}/v1", api_key="wrong", max_retries=0
        ) as oai:
            with pytest.raises(openai.AuthenticationError) as denied:
                await oai.models.list()
        assert denied.value.status_code == 401
        body = denied.value.body
        assert isinstance(body, dict) and set(body) == {"message", "type", "code"}


async def test_the_right_key_works_as_bearer_or_x_api_key() -> None:
    async with guarded() as c:
        async with ollama.AsyncClient(host=c.url, headers=bearer(ALICE)) as client:
            assert M + ":latest" in {m.model for m in (await client.list()).models}
            reply = await client.chat(model=M, messages=[{"role": "user", "content": "hi"}])
        assert reply.message.content
        async with openai.AsyncOpenAI(base_url=f"{c.url}/v1", api_key=BOB, max_retries=0) as oai:
            done = await oai.chat.completions.create(
                model=M, messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        assert done.choices[0].message.content
        tags = await c.http.get("/api/tags", headers={"x-api-key": BOB})
        assert tags.status_code == 200
        assert (
            await c.http.get("/api/tags", headers={"authorization": f"bearer {BOB}"})
        ).is_success
        # The liveness check Ollama clients make before anything else stays open.
        assert (await c.http.get("/")).text == "Ollama is running"
        assert (await c.http.head("/")).status_code == 200


async def test_the_key_name_is_the_fair_share_user_and_the_key_is_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    extra = {"a": {"api_key": BOX_KEY}}
    async with guarded(endpoint_extra=extra) as c:
        h = bearer(ALICE)
        ok = await c.http.post("/api/generate", headers=h, json={"model": M, "prompt": "hi"})
        assert ok.status_code == 200
        c.box("a").faults.error_status = 500
        failed = await c.http.post("/api/generate", headers=h, json={"model": M, "prompt": "x"})
        assert failed.status_code == 500
        status = (await c.http.get("/router/status", headers=h)).json()
        assert "alice" in [u["user"] for u in status["queue"]["users"]]
        seen = [
            ok.text,
            failed.text,
            orjson.dumps(status).decode(),
            (await c.http.get("/router/stats", headers=h)).text,
            (await c.http.get("/metrics", headers=h)).text,
            (await c.http.get(f"/router/explain?model={M}", headers=h)).text,
            (await c.http.get("/dashboard", headers=h)).text,
            (await c.http.get("/api/ps", headers=h)).text,
            repr(c.services.settings),
            caplog.text,
        ]
        assert "key alice" in caplog.text  # the debug log names the key
        for secret in (ALICE, BOX_KEY):
            assert not any(secret in text for text in seen), secret


async def test_a_browser_logs_in_with_a_form_and_gets_an_http_only_session_cookie() -> None:
    async with guarded() as c:
        html = {"accept": "text/html,application/xhtml+xml"}
        page = await c.http.get("/dashboard", headers=html)
        assert (page.status_code, page.headers["location"]) == (303, "/login")
        for path in ("/dashboard", "/router/status", "/router/events", "/metrics"):
            assert (await c.http.get(path)).status_code == 401, path
        form = await c.http.get("/login")
        assert form.status_code == 200
        assert '<form method="post" action="router/login">' in form.text
        assert (
            "<script" not in form.text
            and "script-src" not in form.headers["content-security-policy"]
        )
        assert (await c.http.get("/static/login.css")).status_code == 200

        wrong = await c.http.post("/router/login", data={"key": "guess"})
        assert (wrong.status_code, wrong.headers["location"]) == (303, "/login?failed")
        assert "set-cookie" not in wrong.headers
        assert 'class="failed">' in (await c.http.get("/login?failed")).text

        good = await c.http.post("/router/login", data={"key": ALICE})
        assert (good.status_code, good.headers["location"]) == (303, "/dashboard")
        cookie = good.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert ALICE not in cookie
        token = good.cookies[COOKIE]
        jar = {"cookie": f"{COOKIE}={token}"}
        assert (await c.http.get("/dashboard", headers={**html, **jar})).status_code == 200
        assert (await c.http.get("/router/status", headers=jar)).status_code == 200
        assert (await c.http.get("/metrics", headers=jar)).status_code == 200
        assert (await c.http.get("/static/dashboard.js", headers=jar)).status_code == 200
        async with c.http.stream("GET", "/router/events", headers=jar) as feed:
            assert feed.status_code == 200
            async for line in feed.aiter_lines():
                if line.startswith("event:"):
                    break
        # The cookie opens the dashboard, not the API.
        assert (await c.http.get("/api/tags", headers=jar)).status_code == 401

        out = await c.http.post("/router/logout", headers={**html, **jar})
        assert (out.status_code, out.headers["location"]) == (303, "/login")
        assert (
            "Max-Age=0" in out.headers["set-cookie"]
            or "expires=" in out.headers["set-cookie"].lower()
        )
        assert (await c.http.get("/router/status", headers=jar)).status_code == 401


async def test_json_login_for_scripts() -> None:
    async with guarded() as c:
        denied = await c.http.post("/router/login", json={"key": "guess"})
        assert denied.status_code == 401 and "not valid" in denied.json()["error"]
        ok = await c.http.post("/router/login", json={"key": BOB})
        assert ok.json() == {"name": "bob"}
        jar = {"cookie": f"{COOKIE}={ok.cookies[COOKIE]}"}
        assert (await c.http.get("/router/health", headers=jar)).status_code == 200
        assert (await c.http.post("/router/logout", headers=jar)).status_code == 204


async def test_a_reload_revokes_a_key_and_the_sessions_it_opened() -> None:
    async with guarded() as c:
        login = await c.http.post("/router/login", json={"key": BOB})
        jar = {"cookie": f"{COOKIE}={login.cookies[COOKIE]}"}
        assert (await c.http.get("/router/status", headers=jar)).status_code == 200
        only_alice = {"api_keys": [{"name": "alice", "key": ALICE}]}
        c.services.reconfigure(replace_auth(c, only_alice))
        assert (await c.http.get("/api/tags", headers=bearer(BOB))).status_code == 401
        assert (await c.http.get("/router/status", headers=jar)).status_code == 401
        assert (await c.http.get("/api/tags", headers=bearer(ALICE))).status_code == 200
        c.services.reconfigure(replace_auth(c, {}))  # auth off
        assert (await c.http.get("/api/tags")).status_code == 200


def replace_auth(c: Cluster, auth: dict[str, Any]) -> Any:
    endpoints = [{"url": b.url, "name": b.config.name} for b in c.boxes]
    return parse_settings({"endpoints": endpoints, "auth": auth})


async def test_without_keys_everything_is_open() -> None:
    async with run_cluster(SimConfig(name="a", preloaded=[M])) as c:
        assert (await c.http.get("/api/tags")).status_code == 200
        page = await c.http.get("/dashboard", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert (await c.http.get("/login")).headers["location"] == "/dashboard"


# --- CORS ----------------------------------------------------------------------------

APP = "https://app.example.com"
PREFLIGHT = {
    "origin": APP,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type",
}


async def test_cors_is_off_by_default() -> None:
    async with guarded() as c:
        resp = await c.http.get("/api/tags", headers={"origin": APP, **bearer(ALICE)})
        assert resp.status_code == 200
        assert "access-control-allow-origin" not in resp.headers
        preflight = await c.http.options("/api/chat", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_the_configured_origins_only() -> None:
    async with guarded(cors={"origins": [APP]}) as c:
        preflight = await c.http.options("/api/chat", headers=PREFLIGHT)  # no key needed
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        other = await c.http.options(
            "/api/chat", headers={**PREFLIGHT, "origin": "https://evil.example"}
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        # Errors carry the header too, so the page can read why it was refused.
        refused = await c.http.get("/api/tags", headers={"origin": APP})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == APP
        served = await c.http.get("/api/tags", headers={"origin": APP, **bearer(ALICE)})
        assert served.headers["access-control-allow-origin"] == APP
        assert "x-ollamux-endpoint" in served.headers["access-control-expose-headers"].lower()


# --- no URL a client supplies is ever fetched ----------------------------------------


@asynccontextmanager
async def recorder() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback server that records every request it gets."""
    hits: list[str] = []

    async def anything(request: Request) -> Response:
        hits.append(f"{request.method} {request.url.path}")
        return Response(b"\x89PNG\r\n", media_type="image/png")

    app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST", "HEAD"])])
    async with serve_app(app) as url:
        yield url, hits


async def test_image_urls_in_requests_are_never_fetched() -> None:
    async with recorder() as (url, hits), run_cluster(SimConfig(name="a", preloaded=[M])) as c:
        image = f"{url}/cat.png"
        answers = [
            await c.http.post(
                "/api/chat",
                json={
                    "model": M,
                    "stream": False,
                    "messages": [{"role": "user", "content": "what is this?", "images": [image]}],
                },
            ),
            await c.http.post(
                "/api/generate",
                json={"model": M, "prompt": "x", "images": [image], "stream": False},
            ),
            await c.http.post(
                "/v1/chat/completions",
                json={
                    "model": M,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "what is this?"},
                                {"type": "image_url", "image_url": {"url": image}},
                            ],
                        }
                    ],
                },
            ),
            await c.http.post("/api/show", json={"model": image}),
            await c.http.get(f"/v1/models/{image}"),
        ]
        # An OpenAI image URL cannot be given to an Ollama box as data: refused, not fetched.
        assert answers[2].status_code == 400
        assert "image" in answers[2].json()["error"]["message"].lower()
        assert hits == []
        # The recorder does record: a fetch would have shown.
        async with httpx.AsyncClient() as direct:
            await direct.get(image)
        assert hits == ["GET /cat.png"]


@pytest.mark.browser
async def test_a_browser_is_sent_to_log_in_and_then_sees_the_live_dashboard() -> None:
    from playwright.async_api import async_playwright

    from tests.test_dashboard_browser import CHROMIUM, FLAGS  # skips without Chromium

    async with guarded() as c, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(c.url + "/dashboard")
            assert page.url == c.url + "/login"
            await page.fill("#key", "guess")
            await page.click("button[type=submit]")
            await page.wait_for_url(c.url + "/login?failed")
            assert await page.locator("#failed").is_visible()
            await page.fill("#key", ALICE)
            await page.click("button[type=submit]")
            await page.wait_for_url(c.url + "/dashboard")
            await page.wait_for_function("document.getElementById('conn').textContent === 'live'")
            # The session is invisible to scripts; the key is nowhere in the browser.
            assert await page.evaluate("document.cookie") == ""
            assert await page.evaluate("localStorage.length + sessionStorage.length") == 0
            assert ALICE not in page.url
            status = await page.evaluate(
                "fetch('router/logout', {method: 'POST'}).then(r => r.status)"
            )
            assert status == 204
            await page.reload()
            assert page.url == c.url + "/login"
        finally:
            await browser.close()
