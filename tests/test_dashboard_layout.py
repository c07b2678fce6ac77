"""The dashboard's layout at desktop (1,400 px) and phone (390 px) sizes, and its
rounding, in a real headless Chromium against the demo boxes: nothing clipped or wider
than its place, names never broken inside a word, the tuning figures where they are seen
and naming the config key, durations that read right. Screenshots go to /tmp."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.test_dashboard_browser import CHROMIUM, FLAGS, demo_proxy

pytestmark = pytest.mark.browser

pytest.importorskip("playwright.async_api")
from playwright.async_api import Page, async_playwright  # noqa: E402

SHOTS = "/tmp/ollamux-dashboard"

# Elements whose content must be shown whole: each one that scrolls or clips what it
# holds is listed with its sizes.
CLIPPED = """() => [...document.querySelectorAll('main section, .scroll, .tune, table, .box')]
  .filter((n) => n.offsetParent !== null && n.scrollWidth > n.clientWidth + 1)
  .map((n) => `${n.tagName}.${n.className} ${n.scrollWidth} > ${n.clientWidth}`)"""

# Texts that must stay on one line (box and model names), with the lines each takes.
BROKEN = """(selector) => [...document.querySelectorAll(selector)]
  .filter((n) => n.offsetParent !== null && n.textContent.trim())
  .map((n) => { const r = document.createRange(); r.selectNodeContents(n);
    const lines = new Set([...r.getClientRects()].map((b) => Math.round(b.top)));
    return [n.textContent, lines.size]; })
  .filter(([, lines]) => lines > 1)"""

NAMES = [
    "article.box h3",
    ".model-name",
    "#recent td.box-name",
    "#recent td.model",
    ".tune h3 .box-name",
    ".tune h3 .name",
]


async def traffic(http: Any) -> None:
    """Finished requests at several concurrencies: rows, charts and tuning figures."""
    for n in (1, 2, 3):
        bodies = [
            {"model": m, "prompt": f"layout {n} {i}", "options": {"num_predict": 12}}
            for i, m in enumerate(["llama3.2", "mistral:7b", "qwen2.5:7b"] * n)
        ]
        done = await asyncio.gather(*(http.post("/api/generate", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in done)


async def loaded(page: Page, url: str) -> None:
    await page.goto(url + "/dashboard")
    await page.wait_for_selector("#tuning .tune")
    await page.wait_for_function("() => document.querySelectorAll('#recent tbody tr').length >= 12")


async def check_layout(page: Page, name: str, width: int) -> None:
    await page.screenshot(path=f"{SHOTS}-{name}.png", full_page=True)
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    assert await page.evaluate(CLIPPED) == []
    for selector in NAMES:
        assert await page.evaluate(BROKEN, selector) == [], selector


async def test_layout_at_desktop_and_phone_sizes() -> None:
    async with demo_proxy() as (url, http), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            await traffic(http)
            desktop = await browser.new_page(viewport={"width": 1400, "height": 900})
            await loaded(desktop, url)
            await check_layout(desktop, "desktop", 1400)
            # The tuning figures come before the long table of recent requests, and say
            # which config keys set what they suggest.
            order = await desktop.evaluate(
                "() => [...document.querySelectorAll('main > section h2')].map((h) => h.id)"
            )
            assert order.index("tuning-h") < order.index("recent-h"), order
            tuning = await desktop.locator("section[aria-labelledby=tuning-h]").inner_text()
            assert "endpoints[].max_concurrent" in tuning
            assert "max_concurrent_connections" in tuning

            phone = await browser.new_page(viewport={"width": 390, "height": 844})
            await loaded(phone, url)
            await check_layout(phone, "phone", 390)
            # Every column of a recent request is still there on a phone.
            cells = await phone.locator("#recent tbody tr").first.locator("td").all()
            assert len(cells) == 11
            for cell in cells:
                assert await cell.is_visible()
                box = await cell.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        finally:
            await browser.close()


async def test_durations_and_chart_axes_round_right() -> None:
    async with demo_proxy() as (url, _http), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(url + "/dashboard")
            texts = await page.evaluate(
                """async () => {
                  const dom = await import('/static/dom.js');
                  const now = Date.parse('2026-01-01T00:00:00Z');
                  const at = (s) => new Date(now + s * 1000).toISOString();
                  return [dom.expiry(at(299.6), now), dom.expiry(at(59.97), now),
                          dom.seconds(0.9996), dom.seconds(119.5), dom.seconds(3599.7)];
                }"""
            )
            assert texts == ["unloads in 5m 0s", "unloads in 1m 0s", "1.0 s", "2m 0s", "1h 0m"]
            # A latency chart whose values are around a millisecond: three distinct labels.
            axis = await page.evaluate(
                """async () => {
                  const { LineChart } = await import('/static/charts.js');
                  const { seconds } = await import('/static/dom.js');
                  const chart = new LineChart('t', [{ key: 'v', label: 'v', colour: '--c1' }],
                                              seconds);
                  document.body.append(chart.node);
                  chart.update({ step: 2, series: { v: [0.0004, 0.0009, 0.0007] } });
                  return chart.canvas.dataset.axis;
                }"""
            )
            labels = axis.split(" / ")
            assert len(set(labels)) == 3 and labels[0] == "0 ms", labels
        finally:
            await browser.close()
