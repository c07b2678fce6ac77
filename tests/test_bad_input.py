"""The bad input matrix: every malformed request, on every POST route, is answered with
the right 4xx in the shape of the route's API (``{"error": "..."}`` on /api, OpenAI's
``{"error": {"message", "type", "code"}}`` on /v1), never reaches a box, and leaves no
slot taken. Unknown routes answer 404 and wrong methods 405, in the same shapes.

One fleet serves the whole module (a module-scoped event loop), so the matrix stays fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.settings import Limits
from tests.conftest import Cluster, announce_body, run_cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

M = "llama3.2"
E = "nomic-embed-text"
CHAT_MSG = [{"role": "user", "content": "hi"}]
VALID: dict[str, dict[str, Any]] = {
    "/api/chat": {"model": M, "messages": CHAT_MSG, "stream": False},
    "/api/generate": {"model": M, "prompt": "hi", "stream": False},
    "/api/embed": {"model": E, "input": "hi"},
    "/api/embeddings": {"model": E, "prompt": "hi"},
    "/api/show": {"model": M},
    "/v1/chat/completions": {"model": M, "messages": CHAT_MSG},
    "/v1/completions": {"model": M, "prompt": "hi"},
    "/v1/embeddings": {"model": E, "input": "hi"},
}
POST_ROUTES = list(VALID)
GET_ROUTES = ["/api/tags", "/api/ps", "/api/version", "/v1/models", "/router/status"]
# Fields whose type ollamux checks itself on a route (README "HTTP surface"); elsewhere a
# field is the box's business and is forwarded as it came.
CHECKED: dict[str, set[str]] = {
    "stream": set(POST_ROUTES),
    "messages": {r for r in POST_ROUTES if r.startswith("/api/")} | {"/v1/chat/completions"},
    "options": {r for r in POST_ROUTES if r.startswith("/api/")},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet() -> AsyncIterator[Cluster]:
    cfg = SimConfig(name="a", models=[M, E], preloaded=[M], num_parallel=4)
    async with run_cluster(cfg, max_concurrent_connections=4) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def c(fleet: Cluster) -> AsyncIterator[Cluster]:
    """The fleet; after the test, no slot may be left taken and no request waiting."""
    yield fleet
    status = await settled(fleet)
    assert status["totals"]["in_flight"] == 0, status
    assert status["queue"]["waiting"] == 0, status
    assert all(m["in_use"] == 0 for ep in status["endpoints"] for m in ep["models"]), status


async def settled(c: Cluster) -> dict[str, Any]:
    """The status once in-flight work has ended (a lease is released just after the
    client has read the last byte)."""
    for _ in range(100):
        status = await c.status()
        if status["totals"]["in_flight"] == 0 and status["queue"]["waiting"] == 0:
            return status
        await asyncio.sleep(0.02)
    return status


def api_error(route: str, resp: httpx.Response, status: int) -> str:
    """The error message, after checking the status, the content type and the shape."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    if route.startswith("/v1/"):
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert set(error) >= {"message", "type", "code"}, body
        assert isinstance(error["type"], str) and error["type"]
        message = error["message"]
    else:
        assert isinstance(body, dict) and set(body) == {"error"}, body
        message = body["error"]
    assert isinstance(message, str) and message.strip(), body
    return message


def dumps(doc: object) -> bytes:
    return orjson.dumps(doc)


def without(route: str, field: str) -> bytes:
    return dumps({k: v for k, v in VALID[route].items() if k != field})


def with_(route: str, **fields: Any) -> bytes:
    return dumps({**VALID[route], **fields})


# (case, body for a route, the status it earns, words the message must contain)
Case = tuple[str, Callable[[str], bytes], int, str]
MALFORMED: list[Case] = [
    ("empty body", lambda r: b"", 400, "missing"),
    ("truncated JSON", lambda r: with_(r)[:-3], 400, "invalid JSON"),
    ("trailing garbage", lambda r: with_(r) + b" x", 400, "invalid JSON"),
    ("single quotes", lambda r: with_(r).replace(b'"', b"'"), 400, "invalid JSON"),
    ("NaN literal", lambda r: with_(r)[:-1] + b',"temperature":NaN}', 400, "invalid JSON"),
    ("BOM", lambda r: b"\xef\xbb\xbf" + with_(r), 400, "invalid JSON"),
    ("too deep", lambda r: b"[" * 5000 + b"]" * 5000, 400, "invalid JSON"),
    ("array", lambda r: dumps([VALID[r]]), 400, "JSON object"),
    ("string", lambda r: b'"llama3.2"', 400, "JSON object"),
    ("number", lambda r: b"42", 400, "JSON object"),
    ("null", lambda r: b"null", 400, "JSON object"),
    ("true", lambda r: b"true", 400, "JSON object"),
    ("invalid UTF-8 in a value", lambda r: b'{"model": "llama\xff3.2"}', 400, "UTF-8"),
    ("invalid UTF-8 in a key", lambda r: b'{"mo\xc0\xafdel": "llama3.2"}', 400, "UTF-8"),
    ("overlong UTF-8", lambda r: with_(r)[:-1] + b',"x":"\xc0\xaf"}', 400, "UTF-8"),
    ("lone surrogate", lambda r: with_(r)[:-1] + b',"x":"\\ud800"}', 400, "invalid JSON"),
    (
        "Latin-1 body",
        lambda r: with_(r, user="caf\u00e9").replace(b"\xc3\xa9", b"\xe9"),
        400,
        "UTF-8",
    ),
    ("missing model", lambda r: without(r, "model"), 400, "is required"),
    ("null model", lambda r: with_(r, model=None), 400, "is required"),
    ("empty model", lambda r: with_(r, model=""), 400, "is required"),
    ("numeric model", lambda r: with_(r, model=7), 400, "model must be a string"),
    ("array model", lambda r: with_(r, model=[M]), 400, "model must be a string"),
    ("object model", lambda r: with_(r, model={"name": M}), 400, "model must be a string"),
    ("boolean model", lambda r: with_(r, model=True), 400, "model must be a string"),
]
MISTYPED: list[tuple[str, object]] = [
    ("stream", "yes"),
    ("stream", 1),
    ("stream", {}),
    ("messages", "hi"),
    ("messages", {"role": "user"}),
    ("messages", 3),
    ("options", [1]),
    ("options", "temperature=0"),
    ("options", True),
]


def _id(value: object) -> str:
    return orjson.dumps(value).decode()


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_the_valid_body_is_served(c: Cluster, route: str) -> None:
    """The matrix below changes one thing in these bodies: they must be good as they are."""
    resp = await c.http.post(route, content=dumps(VALID[route]))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-ollamux-endpoint"] == "a"


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize(
    ("case", "body", "status", "words"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
async def test_malformed_bodies_get_a_4xx_in_the_apis_shape(
    c: Cluster, route: str, case: str, body: Callable[[str], bytes], status: int, words: str
) -> None:
    resp = await c.http.post(route, content=body(route))
    message = api_error(route, resp, status)
    assert words in message, message
    assert "x-ollamux-endpoint" not in resp.headers  # refused before any box saw it


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize(("field", "value"), MISTYPED, ids=[f"{f}={_id(v)}" for f, v in MISTYPED])
async def test_mistyped_fields(c: Cluster, route: str, field: str, value: object) -> None:
    resp = await c.http.post(route, content=with_(route, **{field: value}))
    if route in CHECKED[field]:
        message = api_error(route, resp, 400)
        assert field in message, message
        assert "x-ollamux-endpoint" not in resp.headers
    else:  # not this API's field: forwarded untouched, and the box does not mind
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_an_unknown_model_is_404_in_the_apis_shape(c: Cluster, route: str) -> None:
    resp = await c.http.post(route, content=with_(route, model="no-such-model:1b"))
    assert "no-such-model" in api_error(route, resp, 404)


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_a_bad_priority_header_is_400(c: Cluster, route: str) -> None:
    resp = await c.http.post(route, content=with_(route), headers={"X-Priority": "urgent"})
    assert "X-Priority" in api_error(route, resp, 400)


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_a_body_over_the_limit_is_413_before_it_is_read(c: Cluster, route: str) -> None:
    """The head alone announces a body over the 64 MiB default: the answer comes before
    a byte of it is sent (so the client does not upload 64 MiB to be refused)."""
    limit = Limits().max_body_bytes
    assert limit == 64 * 2**20
    resp = await announce_body(c.url, route, limit + 1)
    assert "limit" in api_error(route, resp, 413)


async def test_a_big_body_under_the_limit_is_served(c: Cluster) -> None:
    """Images are big: a 16 MiB request goes through."""
    image = "A" * (16 * 2**20)
    body = dumps({"model": M, "prompt": "what is this?", "images": [image], "stream": False})
    resp = await c.http.post("/api/generate", content=body)
    assert resp.status_code == 200, resp.text[:200]


UNKNOWN = ["/api/nothing", "/api/chat/more", "/v1/nothing", "/v1/chat/completions/x", "/nothing"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
@pytest.mark.parametrize("path", UNKNOWN)
async def test_unknown_routes_are_404_in_the_apis_shape(c: Cluster, path: str, method: str) -> None:
    resp = await c.http.request(method, path, content=b"{}")
    assert path in api_error(path, resp, 404)


async def test_an_unknown_openai_model_is_404_in_openais_shape(c: Cluster) -> None:
    resp = await c.http.get("/v1/models/no-such-model")
    api_error("/v1/models", resp, 404)
    assert resp.json()["error"]["type"] == "model_not_found"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("route", POST_ROUTES)
async def test_wrong_methods_on_post_routes_are_405(c: Cluster, route: str, method: str) -> None:
    resp = await c.http.request(method, route)
    assert method in api_error(route, resp, 405)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("route", GET_ROUTES)
async def test_wrong_methods_on_get_routes_are_405(c: Cluster, route: str, method: str) -> None:
    resp = await c.http.request(method, route, content=b"{}")
    assert method in api_error(route, resp, 405)


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_head_on_a_post_route_is_405_without_a_body(c: Cluster, route: str) -> None:
    resp = await c.http.head(route)
    assert resp.status_code == 405 and resp.content == b""


@pytest.mark.parametrize(("route", "allowed"), [("/api/chat", "POST"), ("/api/tags", "GET")])
async def test_a_405_says_which_methods_are_allowed(c: Cluster, route: str, allowed: str) -> None:
    resp = await c.http.request("PUT", route)
    assert resp.status_code == 405
    assert allowed in resp.headers.get("allow", "")  # RFC 9110: a 405 MUST send Allow


async def test_no_malformed_request_reached_the_box(fleet: Cluster) -> None:
    """Every refusal above happened in ollamux: the box saw only the valid requests."""
    before = fleet.boxes[0].stats.requests
    for route in POST_ROUTES:
        for _, body, _, _ in MALFORMED:
            await fleet.http.post(route, content=body(route))
    assert fleet.boxes[0].stats.requests == before
