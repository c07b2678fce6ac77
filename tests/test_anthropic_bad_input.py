"""The bad input matrix of tests/test_bad_input.py, on Anthropic's routes: every
malformed request is answered with the right 4xx in Anthropic's shape
(``{"type": "error", "error": {"type", "message"}}``), never reaches a box, and leaves no
slot taken; wrong methods are 405 in the same shape.

One fleet serves the whole module (a module-scoped event loop): an Ollama box that
serves /v1/messages itself (count_tokens is translated: Ollama does not count).
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

M = "qwen3-coder:30b"
ASK = [{"role": "user", "content": "hi"}]
VALID: dict[str, dict[str, Any]] = {
    "/v1/messages": {"model": M, "max_tokens": 8, "messages": ASK},
    "/v1/messages/count_tokens": {"model": M, "messages": ASK},
}
ROUTES = list(VALID)
TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}
TYPES[413] = "request_too_large"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet() -> AsyncIterator[Cluster]:
    cfg = SimConfig(name="a", models=[M], preloaded=[M], num_parallel=4, version="0.14.0")
    async with run_cluster(cfg, max_concurrent_connections=4) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def c(fleet: Cluster) -> AsyncIterator[Cluster]:
    yield fleet
    for _ in range(100):
        status = await fleet.status()
        if status["totals"]["in_flight"] == 0 and status["queue"]["waiting"] == 0:
            break
        await asyncio.sleep(0.02)
    assert status["totals"]["in_flight"] == 0, status
    assert all(m["in_use"] == 0 for ep in status["endpoints"] for m in ep["models"]), status


def api_error(resp: httpx.Response, status: int) -> str:
    """The message, after checking the status, the content type and Anthropic's shape."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == TYPES[status], body
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip(), body
    return message


def dumps(doc: object) -> bytes:
    return orjson.dumps(doc)


def with_(route: str, **fields: Any) -> bytes:
    return dumps({**VALID[route], **fields})


def without(route: str, field: str) -> bytes:
    return dumps({k: v for k, v in VALID[route].items() if k != field})


Case = tuple[str, Callable[[str], bytes], str]
MALFORMED: list[Case] = [
    ("empty body", lambda r: b"", "missing"),
    ("truncated JSON", lambda r: with_(r)[:-3], "invalid JSON"),
    ("trailing garbage", lambda r: with_(r) + b" x", "invalid JSON"),
    ("NaN literal", lambda r: with_(r)[:-1] + b',"temperature":NaN}', "invalid JSON"),
    ("BOM", lambda r: b"\xef\xbb\xbf" + with_(r), "invalid JSON"),
    ("too deep", lambda r: b"[" * 5000 + b"]" * 5000, "invalid JSON"),
    ("array", lambda r: dumps([VALID[r]]), "JSON object"),
    ("null", lambda r: b"null", "JSON object"),
    ("invalid UTF-8", lambda r: b'{"model": "qwen\xff3"}', "UTF-8"),
    ("missing model", lambda r: without(r, "model"), "is required"),
    ("numeric model", lambda r: with_(r, model=7), "model must be a string"),
    ("missing messages", lambda r: without(r, "messages"), "messages"),
    ("empty messages", lambda r: with_(r, messages=[]), "messages"),
    ("messages a string", lambda r: with_(r, messages="hi"), "messages must be an array"),
    ("messages an object", lambda r: with_(r, messages=ASK[0]), "messages must be an array"),
    ("stream a string", lambda r: with_(r, stream="yes"), "stream must be a boolean"),
    ("stream a number", lambda r: with_(r, stream=1), "stream must be a boolean"),
]


@pytest.mark.parametrize("route", ROUTES)
async def test_the_valid_body_is_served(c: Cluster, route: str) -> None:
    resp = await c.http.post(route, content=dumps(VALID[route]))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-ollamux-endpoint"] == "a"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("case", "body", "words"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_bodies_get_a_400_in_anthropics_shape(
    c: Cluster, route: str, case: str, body: Callable[[str], bytes], words: str
) -> None:
    resp = await c.http.post(route, content=body(route))
    assert words in api_error(resp, 400)
    assert "x-ollamux-endpoint" not in resp.headers  # refused before any box saw it


@pytest.mark.parametrize("limit", [None, 0, -1, "8", 1.5, True])
async def test_max_tokens_is_required_on_messages(c: Cluster, limit: object) -> None:
    if limit is None:
        body = without("/v1/messages", "max_tokens")
    else:
        body = with_("/v1/messages", max_tokens=limit)
    resp = await c.http.post("/v1/messages", content=body)
    assert "max_tokens" in api_error(resp, 400)


@pytest.mark.parametrize("route", ROUTES)
async def test_an_unknown_model_is_404_in_anthropics_shape(c: Cluster, route: str) -> None:
    resp = await c.http.post(route, content=with_(route, model="claude-opus-4-1"))
    message = api_error(resp, 404)
    assert "claude-opus-4-1" in message and M in message


@pytest.mark.parametrize("route", ROUTES)
async def test_a_bad_priority_header_is_400(c: Cluster, route: str) -> None:
    resp = await c.http.post(route, content=with_(route), headers={"X-Priority": "urgent"})
    assert "X-Priority" in api_error(resp, 400)


@pytest.mark.parametrize("route", ROUTES)
async def test_a_body_over_the_limit_is_413_before_it_is_read(c: Cluster, route: str) -> None:
    resp = await announce_body(c.url, route, Limits().max_body_bytes + 1)
    assert "limit" in api_error(resp, 413)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("route", ROUTES)
async def test_wrong_methods_are_405(c: Cluster, route: str, method: str) -> None:
    resp = await c.http.request(method, route)
    assert method in api_error(resp, 405)
    assert "POST" in resp.headers.get("allow", "")


async def test_no_malformed_request_reached_the_box(fleet: Cluster) -> None:
    before = fleet.boxes[0].stats.requests
    for route in ROUTES:
        for _, body, _ in MALFORMED:
            await fleet.http.post(route, content=body(route))
    assert fleet.boxes[0].stats.requests == before
