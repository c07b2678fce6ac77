"""Totals, recent requests and tuning figures in SQLite (``stats.path``): they survive a
restart, and the request history stays bounded."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.observe.history import Batch, History
from ollamux.routing.settings import ConfigError, parse_settings

BOX = SimConfig(name="a", preloaded=["llama3.2"], default_tokens=9)


async def _generate(c: Any, n: int, tokens: int) -> None:
    for i in range(n):
        body = {"model": "llama3.2", "prompt": f"turn {i}", "options": {"num_predict": tokens}}
        assert (await c.http.post("/api/generate", json=body)).status_code == 200


async def test_token_totals_survive_a_restart(cluster: Any, tmp_path: Path) -> None:
    stats = {"path": str(tmp_path / "ollamux.sqlite3")}
    async with cluster(BOX, stats=stats) as c:
        await _generate(c, 4, tokens=5)
        missing = await c.http.post("/api/generate", json={"model": "nope"})
        assert missing.status_code == 404
        before = (await c.http.get("/router/stats")).json()
        assert before["totals"]["output_tokens"] == 4 * 5
        assert before["totals"]["requests"] == 5 and before["totals"]["errors"] == 1

    async with cluster(BOX, stats=stats) as c:  # a new proxy, new boxes, the same file
        after = (await c.http.get("/router/stats")).json()
        assert after["totals"] == before["totals"]
        assert after["recent"] == before["recent"]
        assert after["boxes"]["a"]["output_tokens"] == 20
        status = await c.status()
        assert status["totals"]["requests"] == 5 and status["totals"]["errors"] == 1
        await _generate(c, 1, tokens=3)
        again = (await c.http.get("/router/stats")).json()
        assert again["totals"]["output_tokens"] == 23
        assert again["recent"][0]["output_tokens"] == 3


async def test_without_a_path_nothing_is_kept(cluster: Any, tmp_path: Path) -> None:
    async with cluster(BOX) as c:
        await _generate(c, 2, tokens=4)
    async with cluster(BOX) as c:
        stats = (await c.http.get("/router/stats")).json()
        assert stats["totals"]["output_tokens"] == 0 and stats["recent"] == []


async def test_tuning_figures_survive_a_restart(cluster: Any, tmp_path: Path) -> None:
    stats = {"path": str(tmp_path / "s.sqlite3")}
    async with cluster(BOX, stats=stats) as c:
        await _generate(c, 4, tokens=6)
        tuning = (await c.http.get("/router/stats")).json()["tuning"]
        assert tuning and tuning[0]["levels"][0]["samples"] == 4
    async with cluster(BOX, stats=stats) as c:
        assert (await c.http.get("/router/stats")).json()["tuning"] == tuning


async def test_request_history_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    history = History(str(path), keep=5)
    await history.open(recent=50)
    row = {"at": 1.0, "box": "a", "model": "m", "route": "/api/chat", "status": 200}
    row.update(prompt_tokens=1, output_tokens=2, failed=False)
    for i in range(4):
        batch = Batch(requests=[{**row, "duration": float(i * 3 + j)} for j in range(3)])
        await history.save(batch)
    await history.close()
    reopened = History(str(path), keep=5)
    stored = await reopened.open(recent=50)
    await reopened.close()
    assert [r["duration"] for r in stored.requests] == [7.0, 8.0, 9.0, 10.0, 11.0]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone() == (5,)


async def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer ollamux"):
        await History(str(path), keep=5).open(recent=5)


async def test_an_unusable_file_leaves_the_proxy_serving(
    cluster: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(BOX, stats={"path": str(tmp_path)}) as c:  # a directory
        await _generate(c, 2, tokens=4)
        stats = (await c.http.get("/router/stats")).json()
        assert stats["totals"]["output_tokens"] == 8
    assert any("keeping them in memory" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("stats", "message"),
    [
        ({"path": 3}, "stats.path has value 3"),
        ({"history": 0}, "stats.history has value 0"),
        ({"latency_bound": 1}, "stats.latency_bound has value 1"),
        ({"keep": 3}, "unknown key stats.keep"),
    ],
)
def test_bad_stats_settings_are_refused(stats: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"endpoints": ["http://127.0.0.1:11434"], "stats": stats})


def test_stats_settings_defaults() -> None:
    settings = parse_settings({"endpoints": ["http://127.0.0.1:11434"]})
    assert settings.stats.path is None
    assert settings.stats.history == 1000
    assert settings.stats.latency_bound == 2.0
