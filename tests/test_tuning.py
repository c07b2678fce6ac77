"""The max_concurrent suggestion: levels measured from slot usage, tokens attributed to
the time they were decoded, and where one more slot stops paying off."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.accounting import Counts
from ollamux.routing.observe.tuning import MIN_SAMPLES, Level, Timeline, Tuning, suggest
from tests.conftest import Cluster


def test_timeline_means_and_segments() -> None:
    line = Timeline(0.0)
    assert line.set(2, 1.0) == (0, 1.0)
    assert line.set(4, 3.0) == (2, 2.0)
    assert line.set(4, 3.5) == (4, 0.0)  # no change, nothing lasted
    line.set(0, 4.0)
    assert line.mean(1.0, 3.0) == pytest.approx(2.0)
    assert line.mean(2.0, 4.0) == pytest.approx(3.0)  # 1 s at 2, 1 s at 4
    assert line.mean(3.5, 3.5) == 4.0
    assert list(line.segments(0.5, 3.5)) == [(0, 0.5), (2, 2.0), (4, 0.5)]


def test_tokens_go_to_the_levels_they_were_decoded_at() -> None:
    tuning = Tuning(bound=2.0)
    key = ("a", "m")
    tuning.usage_changed({key: 1}, 0.0)
    tuning.usage_changed({key: 2}, 1.0)
    tuning.usage_changed({}, 3.0)
    # decoded 30 tokens over [0, 3]: 10 at level 1, 20 at level 2; mean level 5/3 -> 2
    level = tuning.finished(key, 0.0, 3.0, Counts(output_tokens=30, decode_seconds=3.0))
    assert level == 2
    levels = tuning.levels[key]
    assert levels[1].tokens == pytest.approx(10) and levels[1].seconds == pytest.approx(1)
    assert levels[2].tokens == pytest.approx(20) and levels[2].seconds == pytest.approx(2)
    assert levels[2].samples == 1 and levels[2].decode_rate == pytest.approx(10)
    # A request that decoded only in the last second: filed at level 2.
    assert tuning.finished(key, 0.0, 3.0, Counts(output_tokens=5, decode_seconds=1.0)) == 2


def test_time_spent_loading_the_model_is_left_out_once() -> None:
    tuning = Tuning(bound=2.0)
    key = ("a", "m")
    tuning.usage_changed({key: 2}, 0.0)  # two requests wait for one 2 s load
    tuning.usage_changed({}, 4.0)
    for _ in range(2):
        counts = Counts(output_tokens=20, decode_seconds=2.0, load_seconds=2.0, total_seconds=4.0)
        assert tuning.finished(key, 0.0, 4.0, counts) == 2
    figures = tuning.levels[key][2]
    assert figures.seconds == pytest.approx(4) and figures.loading == pytest.approx(2)
    assert figures.total == pytest.approx(40 / 2)  # 40 tokens in the 2 s it decoded
    # A load shorter than LOAD_MIN is the box finding the model already loaded.
    tuning.usage_changed({key: 1}, 10.0)
    tuning.usage_changed({}, 11.0)
    quick = Counts(output_tokens=10, decode_seconds=1.0, load_seconds=0.01, total_seconds=1.0)
    tuning.finished(key, 10.0, 11.0, quick)
    assert tuning.levels[key][1].loading == 0


def level(total: float, decode: float | None, samples: int = MIN_SAMPLES) -> Level:
    figures = Level(samples=samples, tokens=total * 10, seconds=10)
    if decode is not None:
        figures.decode_samples, figures.decode_sum = samples, decode * samples
    return figures


@pytest.mark.parametrize(
    ("levels", "value", "reason"),
    [
        ({}, None, "not enough"),
        ({1: level(50, 50)}, None, "only 1"),
        ({1: level(50, 50), 2: level(100, 50), 3: level(150, 50)}, 3, "still rising"),
        ({1: level(50, 50), 2: level(95, 48), 3: level(97, 32), 4: level(98, 25)}, 2, "stops"),
        # 8 -> 9 can add at most 12.5%: 5% is worth it; 2 -> 3 needs over 12.5%
        ({8: level(400, 50), 9: level(420, 47)}, 9, "still rising"),
        ({2: level(100, 50), 3: level(110, 37)}, 2, "stops"),
        # throughput still rises at 4, but each request decodes 2.5x slower than alone
        ({1: level(50, 50), 2: level(90, 45), 4: level(120, 20)}, 2, "slower"),
        # a level seen too rarely does not count (counted, it would make the answer 3)
        ({1: level(50, 50), 2: level(100, 50), 3: level(150, 50, samples=1)}, 2, "still rising"),
    ],
)
def test_suggestion(levels: dict[int, Level], value: int | None, reason: str) -> None:
    picked = suggest(levels, bound=2.0)
    assert picked.value == value
    assert reason in picked.reason


async def _closed_loop(c: Cluster, clients: int, seconds: float) -> None:
    """``clients`` clients, each sending its next request as soon as one ends."""
    end = time.monotonic() + seconds

    async def client(i: int) -> None:
        n = 0
        while time.monotonic() < end:
            body = {"model": "llama3.2", "prompt": f"client {i} turn {n}"}
            resp = await c.http.post("/api/generate", json=body)
            assert resp.status_code == 200
            n += 1

    await asyncio.gather(*(client(i) for i in range(clients)))


async def test_suggestion_finds_what_the_box_runs_at_once(cluster: Any) -> None:
    """A box that runs 3 requests at once, given 5 slots: past 3, requests only queue
    inside it, total throughput stops rising, and that is what the suggestion says."""
    box = SimConfig(
        name="a", preloaded=["llama3.2"], num_parallel=3, tokens_per_s=200.0, default_tokens=80
    )
    async with cluster(box, max_concurrent_connections=5) as c:
        for clients in (1, 3, 5):
            await _closed_loop(c, clients, 1.3)
        stats = (await c.http.get("/router/stats")).json()
    (row,) = stats["tuning"]
    assert (row["box"], row["model"], row["max"]) == ("a", "llama3.2:latest", 5)
    totals = {lv["concurrency"]: lv["total_tps"] for lv in row["levels"]}
    capacity = 3 * 200.0  # tokens/s the box can give, however many wait
    assert totals[3] > 2.4 * totals[1]
    assert totals[5] < 1.05 * capacity
    assert row["suggested"] == 3, row
