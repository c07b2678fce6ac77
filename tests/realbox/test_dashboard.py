"""The dashboard in headless Chromium (Debian's, driven by Playwright) against real
llama-servers and a simulated Ollama box: every box drawn with its health, a request in
flight shown on its slot bar, no console errors. The screenshot is kept as a test
artifact: ``artifacts/realbox-dashboard.png`` (or under ``$OLLAMUX_ARTIFACTS``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.realbox.conftest import ONE, Fleet, unavailable

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("OLLAMUX_ARTIFACTS", ROOT / "artifacts"))
# Chromium as root on a machine with no network but loopback (see the env notes).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        unavailable("no chromium: apt-get install chromium")
    assert path is not None
    return path


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


async def test_dashboard_in_headless_chromium(fleet: Fleet, artifacts: Path) -> None:
    executable = chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("playwright (Python) is not installed")
    errors: list[str] = []
    async with (
        async_playwright() as pw,
        fleet.held_stream(ONE, 12000),  # in flight: one slot of llama-one is taken
    ):
        browser = await pw.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{fleet.url}/dashboard")
            for name in ("llama-one", "llama-router", "ollama-sim"):
                card = page.locator(f'article.box[data-box="{name}"][data-health="healthy"]')
                await card.wait_for(timeout=10_000)
            one = page.locator('article.box[data-box="llama-one"]')
            assert "llama-server" in await one.locator(".meta").inner_text()
            meter = one.locator(f'li.model[data-model^="{ONE}"] [role=meter]')
            await meter.and_(page.locator('[aria-valuenow="1"]')).wait_for(timeout=10_000)
            assert await meter.get_attribute("aria-valuemax") == "2"
            shot = artifacts / "realbox-dashboard.png"
            png = await page.screenshot(path=str(shot), full_page=True)
            assert len(png) > 10_000
        finally:
            await browser.close()
    assert errors == []
