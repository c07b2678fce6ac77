"""Who is to blame for a failure: the box, the (box, model), or the request.

One client sending requests that make Ollama answer 500 (a model that fails to load)
must not open the breakers of boxes that other users' models run on: a request that
failed identically on two boxes is not carried to a third, and it counts against no box.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ollamux.backends.sim.ollama import SimConfig
from tests.conftest import Cluster

GOOD, BAD = "llama3.2", "broken:7b"
LOAD_ERROR = "llama runner process has terminated: exit status 2"


def gen(model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "stream": False, "options": {"num_predict": 1}}


async def breakers(c: Cluster) -> dict[str, str]:
    return {ep["name"]: ep["breaker"] for ep in (await c.status())["endpoints"]}


async def test_a_request_that_fails_alike_on_two_boxes_takes_no_box_out(cluster: Any) -> None:
    boxes = [SimConfig(name=n, preloaded=[GOOD], models=[GOOD, BAD]) for n in "abc"]
    async with cluster(*boxes, failover={"breaker_failures": 3, "max_attempts": 3}) as c:
        for box in c.boxes:
            box.faults.load_error = {f"{BAD}": LOAD_ERROR}
        for i in range(3):
            resp = await c.http.post("/api/generate", json=gen(BAD, f"bad{i}"))
            assert resp.status_code == 500 and resp.json() == {"error": LOAD_ERROR}
        tried = {b.config.name: b.stats.requests for b in c.boxes}
        print(f"\nboxes tried by 3 bad requests: {tried}; breakers {await breakers(c)}")
        assert sum(tried.values()) == 6  # each request on two boxes, never a third
        assert set((await breakers(c)).values()) == {"closed"}
        served = 0
        for i in range(20):
            resp = await c.http.post("/api/generate", json=gen(GOOD, f"good{i}"))
            served += resp.status_code == 200
        assert served == 20
        assert await c.in_use() == 0


async def test_a_box_error_naming_the_model_is_the_models_not_the_boxes(cluster: Any) -> None:
    """The failures open the (box, model)'s breaker: that model is not sent there for a
    while (503 saying why), and the box keeps serving its other models."""
    async with cluster(
        SimConfig(name="a", preloaded=[GOOD], models=[GOOD, BAD]),
        failover={"breaker_failures": 2, "breaker_backoff": 0.3, "breaker_max_backoff": 0.3},
    ) as c:
        a = c.box("a")
        a.faults.load_error = {BAD: f'model "{BAD}" failed to load: not enough memory'}
        for i in range(2):
            resp = await c.http.post("/api/generate", json=gen(BAD, f"bad{i}"))
            assert resp.status_code == 500 and BAD in resp.json()["error"]
        refused = await c.http.post("/api/generate", json=gen(BAD, "bad2"))
        assert refused.status_code == 503, refused.text
        assert "failing" in refused.json()["error"] and a.stats.requests == 2
        assert (await breakers(c))["a"] == "closed"
        assert (await c.status())["endpoints"][0]["failing"] == [BAD]
        resp = await c.http.post("/api/generate", json=gen(GOOD, "good"))
        assert resp.status_code == 200
        # Once the model loads there again, a trial after the backoff closes it.
        a.faults.load_error = {}
        await asyncio.sleep(0.4)
        resp = await c.http.post("/api/generate", json=gen(BAD, "bad3"))
        assert resp.status_code == 200, resp.text
        again = await c.http.post("/api/generate", json=gen(BAD, "bad4"))
        assert again.status_code == 200


async def test_a_box_that_fails_where_another_serves_is_still_blamed(cluster: Any) -> None:
    async with cluster(
        SimConfig(name="a", preloaded=[GOOD]),
        SimConfig(name="b", preloaded=[GOOD]),
        priority_routing=True,
        failover={"breaker_failures": 2},
    ) as c:
        c.box("a").faults.error_status = 500
        for i in range(2):
            resp = await c.http.post("/api/generate", json=gen(GOOD, f"p{i}"))
            assert resp.status_code == 200 and resp.headers["x-ollamux-endpoint"] == "b"
        assert (await breakers(c))["a"] == "open"
