"""The dashboard of a replica lists the fleet's replicas and says when Redis is away
(headless Chromium, as tests/test_dashboard_browser.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.shared.conftest import RedisServer
from tests.shared.test_replicas import chat, fleet
from tests.test_dashboard_browser import CHROMIUM, FLAGS

pytestmark = pytest.mark.browser

from playwright.async_api import async_playwright  # noqa: E402


async def test_the_dashboard_lists_replicas_and_a_lost_redis(redis_server: RedisServer) -> None:
    async with fleet(redis_server, replicas=2, boxes=1) as f, async_playwright() as pw:
        a, b = f.replicas
        slow = [asyncio.create_task(chat(a, options={"num_predict": 800})) for _ in range(2)]
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(b.url + "/dashboard")
            rows = page.locator("#replicas tbody tr")
            for _ in range(200):  # the heartbeat reports replica-0's two leases
                texts = await rows.all_inner_texts()
                if any(t.startswith("replica-0\t") and "\t2\t" in t for t in texts):
                    break
                await asyncio.sleep(0.05)
            assert any(t.startswith("replica-0\t") and "\t2\t" in t for t in texts), texts
            assert any(t.startswith("replica-1 (this one)") for t in texts), texts
            redis_server.stop()
            await page.get_by_text("unreachable").wait_for(timeout=10_000)
        finally:
            await browser.close()
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
