"""A dashboard opened after a quiet spell shows the stats as they are now, not the ones
cached when its last viewer left."""

from __future__ import annotations

import asyncio
from typing import Any

from ollamux.backends.sim.ollama import SimConfig
from tests.test_events import feed


async def first_stats(c: Any) -> dict[str, Any]:
    async with feed(c) as events, asyncio.timeout(5):
        async for event in events:
            if event.name == "stats":
                data: dict[str, Any] = event.data
                return data
    raise AssertionError("no stats event")


async def test_the_first_stats_event_after_a_quiet_spell_is_fresh(cluster: Any) -> None:
    async with cluster(SimConfig(name="a", preloaded=["llama3.2"])) as c:
        c.services.feed.stats_every = 30.0  # the periodic one must not come to the rescue
        before = await first_stats(c)  # a viewer comes and goes: its stats stay cached
        for i in range(5):
            resp = await c.http.post(
                "/api/generate", json={"model": "llama3.2", "prompt": f"x{i}", "stream": False}
            )
            assert resp.status_code == 200
        # Rebuilt on connect unless built less than min_gap ago (many viewers connecting
        # at once share one); a quiet spell is longer than that.
        await asyncio.sleep(c.services.feed.min_gap + 0.05)
        after = await first_stats(c)
        assert after["totals"]["requests"] == before["totals"]["requests"] + 5, (before, after)
        assert after["at"] > before["at"]
