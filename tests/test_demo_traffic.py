"""``ollamux --demo`` keeps its dashboard alive: demo clients send requests through the
proxy, to loopback only."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ollamux.backends.sim.demo import DEMO_BOXES, DemoTraffic, traffic_url
from tests.conftest import Cluster


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:12434"),
        ("127.0.0.2", "http://127.0.0.2:12434"),
        ("localhost", "http://127.0.0.1:12434"),
        ("0.0.0.0", "http://127.0.0.1:12434"),
        ("::", "http://[::1]:12434"),
        ("::1", "http://[::1]:12434"),
        ("192.168.1.5", None),  # listening elsewhere only: no demo clients
        ("gpu-box.lan", None),
    ],
)
def test_demo_clients_talk_to_loopback_only(host: str, url: str | None) -> None:
    assert traffic_url(host, 12434) == url


async def _requests(c: Cluster) -> int:
    stats = (await c.http.get("/router/stats")).json()
    return int(stats["totals"]["requests"])


async def test_demo_traffic_reaches_the_boxes_through_the_proxy(cluster: Any) -> None:
    async with cluster(*DEMO_BOXES) as c:
        async with DemoTraffic(c.url, rng=random.Random(7), waves=(6,)) as traffic:

            async def enough() -> bool:
                return await _requests(c) >= 3

            await c.wait_for(enough, within=15)
        assert traffic.sent >= 3
        stats = (await c.http.get("/router/stats")).json()
        served = [r for r in stats["recent"] if r["status"] == 200]
        assert served and all(r["box"] in {"gpu-a", "gpu-b", "gpu-c"} for r in served)
        assert await c.in_use() == 0  # stopping the traffic left no slot behind
