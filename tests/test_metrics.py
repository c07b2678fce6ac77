"""GET /metrics: Prometheus' text format, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from ollamux.backends.sim.ollama import SimConfig
from tests.conftest import Cluster, run_cluster

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(c: Cluster) -> Samples:
    resp = await c.http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def test_requests_tokens_and_latency_are_counted(cluster: Any) -> None:
    async with cluster(
        SimConfig(name="a", preloaded=["llama3.2"], default_tokens=7),
        SimConfig(name="b", models=["qwen2.5:7b"], preloaded=["qwen2.5:7b"]),
    ) as c:
        for i in range(3):
            body = {"model": "llama3.2", "prompt": str(i)}
            assert (await c.http.post("/api/generate", json=body)).status_code == 200
        await c.http.post(
            "/api/chat", json={"model": "qwen2.5:7b", "messages": [], "stream": False}
        )
        missing = await c.http.post("/api/chat", json={"model": "nope", "messages": []})
        assert missing.status_code == 404
        c.box("a").faults.error_status = 500
        await c.http.post("/api/generate", json={"model": "llama3.2", "stream": False})

        m = await scrape(c)
        labels = {"box": "a", "model": "llama3.2:latest", "route": "/api/generate"}
        assert value(m, "ollamux_requests_total", **labels, status="200") == 3
        assert value(m, "ollamux_requests_total", **labels, status="500") == 1
        assert value(m, "ollamux_requests_total", box="", model="nope:latest", route="/api/chat",
                     status="404") == 1  # fmt: skip
        assert total(m, "ollamux_requests_total", box="b", status="200") == 1
        pair = {"box": "a", "model": "llama3.2:latest"}
        assert value(m, "ollamux_tokens_total", **pair, kind="output") == 3 * 7
        assert value(m, "ollamux_tokens_total", **pair, kind="prompt") >= 3
        assert value(m, "ollamux_time_to_first_token_seconds_count", **pair) == 4
        assert value(m, "ollamux_request_duration_seconds_count", **pair) == 4
        assert value(m, "ollamux_request_duration_seconds_bucket", **pair, le="+Inf") == 4
        assert value(m, "ollamux_request_duration_seconds_sum", **pair) > 0


async def test_fleet_figures_are_read_at_scrape_time(cluster: Any) -> None:
    slow = {"tokens_per_s": 30.0, "default_tokens": 30, "load_time": 0.3}
    async with cluster(
        SimConfig(name="a", preloaded=["llama3.2"], **slow),
        SimConfig(name="b", models=["mistral:7b"], **slow),
    ) as c:
        m = await scrape(c)
        assert value(m, "ollamux_box_health", box="a", state="healthy") == 1
        assert value(m, "ollamux_box_health", box="a", state="down") == 0
        assert value(m, "ollamux_breaker_state", box="a", state="closed") == 1
        assert value(m, "ollamux_slots", box="a", model="llama3.2:latest") == 2
        assert value(m, "ollamux_model_loaded", box="a", model="llama3.2:latest") == 1
        assert value(m, "ollamux_model_loaded", box="b", model="mistral:7b") == 0
        assert value(m, "ollamux_in_flight") == 0

        async with c.http.stream(
            "POST", "/api/generate", json={"model": "mistral:7b", "prompt": "x"}
        ) as resp:
            m = await scrape(c)
            assert value(m, "ollamux_in_flight") == 1
            assert value(m, "ollamux_slots_in_use", box="b", model="mistral:7b") == 1
            assert value(m, "ollamux_waiting") == 0
            await resp.aread()

        # The prober sees the model the request loaded; then box a goes away.
        await c.wait_for(lambda: _loads(c, "b", "mistral:7b", 1))
        await c.box("a").stop()
        await c.wait_for(lambda: _health(c, "a", "down"))
        m = await scrape(c)
        assert value(m, "ollamux_box_failures_total", box="a") >= 1
        assert value(m, "ollamux_box_failures_total", box="b") == 0


async def _loads(c: Cluster, box: str, model: str, n: int) -> bool:
    return value(await scrape(c), "ollamux_model_loads_total", box=box, model=model) == n


async def _health(c: Cluster, box: str, state: str) -> bool:
    return value(await scrape(c), "ollamux_box_health", box=box, state=state) == 1


async def test_openmetrics_when_the_scraper_asks_for_it(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", preloaded=["llama3.2"])) as c:
        await c.http.post("/api/generate", json={"model": "llama3.2", "stream": False})
        accept = "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
        resp = await c.http.get("/metrics", headers={"accept": accept})
        assert resp.headers["content-type"].startswith("application/openmetrics-text")
        assert resp.text.endswith("# EOF\n")
        families = {f.name: f for f in openmetrics_families(resp.text)}
        (sample,) = [s for s in families["ollamux_requests"].samples if s.name.endswith("_total")]
        assert sample.value == 1 and sample.labels["status"] == "200"


async def test_two_apps_keep_separate_registries() -> None:
    async with (
        run_cluster(SimConfig(name="a", preloaded=["llama3.2"])) as one,
        run_cluster(SimConfig(name="a", preloaded=["llama3.2"])) as two,
    ):
        await asyncio.gather(
            *(one.http.post("/api/generate", json={"model": "llama3.2"}) for _ in range(3))
        )
        await two.http.post("/api/generate", json={"model": "llama3.2"})
        assert total(await scrape(one), "ollamux_requests_total") == 3
        assert total(await scrape(two), "ollamux_requests_total") == 1
        # nothing leaks into prometheus_client's process-wide default registry
        async with httpx.AsyncClient(base_url=one.url) as http:
            text = (await http.get("/metrics")).text
        assert "python_gc_objects_collected_total" not in text
        assert "process_cpu_seconds_total" not in text
