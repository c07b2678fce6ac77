"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``) against the demo cluster. Screenshots are saved
under ``artifacts/`` in the repository root.

Without Chromium the test is skipped on a developer's machine and fails in CI (``CI``
set), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollamux.app import create_app
from ollamux.backends.sim.demo import demo_cluster
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
EVIL = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"

if not os.environ.get("CI"):  # in CI a missing browser is a failure, not a skip
    pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed", allow_module_level=True)

from playwright.async_api import Page, async_playwright  # noqa: E402


@asynccontextmanager
async def demo_proxy() -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The demo's boxes (no demo traffic: the test sends its own), one box whose only
    model has a hostile name, and the proxy in front with fast probes."""
    async with AsyncExitStack() as stack:
        demo = await stack.enter_async_context(demo_cluster())
        evil = await stack.enter_async_context(SimBox(SimConfig(name="evil", models=[EVIL])))
        endpoints = [
            {"url": ep.url, "name": ep.name, "max_concurrent": ep.max_concurrent}
            for ep in demo.endpoints
        ]
        endpoints.append({"url": evil.url, "name": "evil"})
        settings = parse_settings({"endpoints": endpoints, "probe": {"ps": 0.2}})
        url = await stack.enter_async_context(serve_app(create_app(settings)))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        yield url, http


async def slots_in_use(page: Page, box: str, model: str) -> int:
    meter = page.locator(f'article.box[data-box="{box}"] li[data-model="{model}"] [role=meter]')
    return int(await meter.get_attribute("aria-valuenow") or -1)


async def wait_for_slots(page: Page, model: str, n: int) -> None:
    """Until the slot bars of ``model``, on whichever boxes, show ``n`` in use in all."""
    await page.wait_for_function(
        """([model, n]) => [...document.querySelectorAll(`li[data-model="${model}"] [role=meter]`)]
            .reduce((sum, bar) => sum + Number(bar.getAttribute("aria-valuenow")), 0) === n""",
        arg=[model, n],
        timeout=10_000,
    )


async def test_dashboard_shows_the_demo_cluster_live() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    running: list[asyncio.Task[httpx.Response]] = []
    async with demo_proxy() as (url, http), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.emulate_media(color_scheme="dark")
            await page.goto(url + "/dashboard")

            await page.wait_for_selector('article.box[data-box="evil"]')
            names = await page.locator("article.box h3").all_text_contents()
            assert names == ["gpu-a", "gpu-b", "gpu-c", "evil"]
            assert await page.locator("#conn").text_content() == "live"
            assert await slots_in_use(page, "gpu-c", "mistral:7b") == 0

            # A hostile model name is shown as text, and nothing in it ran.
            idle = await page.locator('article.box[data-box="evil"] .idle-models').text_content()
            assert idle is not None and f"{EVIL}:latest" in idle
            assert await page.evaluate("window.pwned") is None
            assert await page.locator("#boxes script, #boxes img").count() == 0

            # Some finished requests, for the charts, the table and the tuning figures.
            short = [
                {"model": model, "prompt": f"warm {i}", "options": {"num_predict": 20}}
                for i, model in enumerate(["llama3.2", "mistral:7b", "qwen2.5:7b"] * 3)
            ]
            who = {"X-User-Id": "alice"}
            done = await asyncio.gather(
                *(http.post("/api/generate", json=b, headers=who) for b in short)
            )
            assert all(r.status_code == 200 for r in done)
            # Fair share: the waiting room lists who has been served lately.
            await page.wait_for_selector("table.users td.name >> text=alice")

            # Slot bars follow requests while they run.
            body = {"model": "mistral:7b", "prompt": "x", "options": {"num_predict": 300}}
            for _ in range(3):
                running.append(asyncio.create_task(http.post("/api/generate", json=body)))
            await wait_for_slots(page, "mistral:7b", 3)
            assert not any(task.done() for task in running)
            await asyncio.sleep(2.2)  # a stats event: rates and charts
            await page.screenshot(path=ARTIFACTS / "dashboard-dark.png", full_page=True)
            await page.emulate_media(color_scheme="light")
            await asyncio.sleep(0.4)  # slot colours fade (a CSS transition)
            await page.screenshot(path=ARTIFACTS / "dashboard-light.png", full_page=True)

            for task in running:
                assert (await task).status_code == 200
            await wait_for_slots(page, "mistral:7b", 0)
            await page.wait_for_function(
                "() => document.querySelectorAll('#recent tbody tr').length >= 12",
                timeout=10_000,
            )
            row = await page.locator("#recent tbody tr").first.locator("td").all_text_contents()
            assert row[1] == "mistral:7b" and row[2] in ("gpu-b", "gpu-c")
            assert row[3:5] == ["/api/generate", "200"]
            assert row[8].endswith("→ 300")
            assert row[10].startswith(row[2] + ": model")  # why that box
            # Learned costs: a decode rate's tooltip gives it per number of the model's
            # requests the box ran together (three mistral requests ran at once above, on
            # two boxes at most: one ran two together).
            await page.wait_for_function(
                "() => [...document.querySelectorAll('table.learned td[title]')]"
                ".some(td => /[23] running: /.test(td.title))",
                timeout=10_000,
            )

            phone = await browser.new_page(viewport={"width": 390, "height": 844})
            await phone.goto(url + "/dashboard")
            await phone.wait_for_selector('article.box[data-box="evil"]')
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390  # one column, nothing wider than the screen
            await phone.screenshot(path=ARTIFACTS / "dashboard-phone.png")
            assert problems == []
        finally:
            await browser.close()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


async def test_dashboard_page_is_locked_down(cluster: Any) -> None:
    async with cluster(SimConfig(name="a")) as c:
        page = await c.http.get("/dashboard")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "<script" in page.text and "http" not in page.text.split("<body>")[0]
        scripts = ("dashboard.js", "api.js", "dom.js", "boxes.js", "charts.js", "tables.js")
        for name in (*scripts, "replicas.js"):
            script = await c.http.get(f"/static/{name}")
            assert script.status_code == 200
            assert "javascript" in script.headers["content-type"]
            assert "innerHTML" not in script.text and "eval(" not in script.text
