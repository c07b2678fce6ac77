"""What survives a restart: totals per (box, model), the most recent requests, and the
per-level tuning figures, in one SQLite file (``stats.path``). Without a path nothing is
stored: the figures live in ``Stats`` alone, and no batch costs a thread hand-off.

SQLite is synchronous, so it never runs on the event loop: ``Stats`` hands over a
``Batch`` of what changed every few seconds and at shutdown, and it is written in a
worker thread, one batch at a time. Totals and levels are stored as absolute values
(an upsert per changed row), so a lost batch loses seconds, never corrupts a sum.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("ollamux.history")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS totals (
    box TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    PRIMARY KEY (box, model));
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL, box TEXT NOT NULL, model TEXT NOT NULL, route TEXT NOT NULL,
    status INTEGER NOT NULL, waited REAL, ttft REAL, duration REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    decode_tps REAL, error TEXT, why TEXT, failed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS levels (
    box TEXT NOT NULL, model TEXT NOT NULL, level INTEGER NOT NULL,
    samples INTEGER NOT NULL, decode_samples INTEGER NOT NULL, decode_sum REAL NOT NULL,
    tokens REAL NOT NULL, seconds REAL NOT NULL, loading REAL NOT NULL,
    PRIMARY KEY (box, model, level));
"""
REQUEST_COLUMNS = (
    "at",
    "box",
    "model",
    "route",
    "status",
    "waited",
    "ttft",
    "duration",
    "prompt_tokens",
    "output_tokens",
    "decode_tps",
    "error",
    "why",
    "failed",
)

TotalsRow = tuple[str, str, int, int, int, int]  # box, model, requests, errors, prompt, output
# box, model, level, samples, decode_samples, decode_sum, tokens, seconds, loading
LevelRow = tuple[str, str, int, int, int, float, float, float, float]


@dataclass
class Batch:
    totals: list[TotalsRow] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    levels: list[LevelRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.totals or self.requests or self.levels)


@dataclass
class Stored:
    totals: list[TotalsRow]
    requests: list[dict[str, Any]]  # oldest first
    levels: list[LevelRow]


class History:
    def __init__(self, path: str | None, keep: int) -> None:
        self.path = path
        self.keep = keep
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one batch at a time

    async def open(self, recent: int) -> Stored:
        """Open (or create) the file and read back what it holds."""
        if self.path is None:
            return Stored([], [], [])
        async with self._lock:
            return await asyncio.to_thread(self._open, recent)

    async def save(self, batch: Batch) -> None:
        if not batch or self.path is None:
            return
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, batch)
            except sqlite3.Error as exc:
                log.warning("could not save statistics to %s: %s", self.path, exc)

    async def close(self) -> None:
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await asyncio.to_thread(db.close)

    def _open(self, recent: int) -> Stored:
        assert self.path is not None
        target = self.path
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        # Used from worker threads, one at a time (the lock above).
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=2000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{target} was written by a newer ollamux (schema {version})"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            stored = Stored(
                totals=db.execute("SELECT * FROM totals").fetchall(),
                requests=_recent(db, recent),
                levels=db.execute("SELECT * FROM levels").fetchall(),
            )
        except BaseException:
            db.close()
            raise
        self._db = db
        return stored

    def _write(self, batch: Batch) -> None:
        db = self._db
        if db is None:
            return
        placeholders = ", ".join("?" * len(REQUEST_COLUMNS))
        with db:  # one transaction
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO totals VALUES (?, ?, ?, ?, ?, ?)", batch.totals)
            db.executemany(
                "INSERT OR REPLACE INTO levels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batch.levels
            )
            db.executemany(
                f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({placeholders})",
                [tuple(row.get(c) for c in REQUEST_COLUMNS) for row in batch.requests],
            )
            db.execute(
                "DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?",
                (self.keep,),
            )


def _recent(db: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    rows = db.execute(
        f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    out = [dict(zip(REQUEST_COLUMNS, row, strict=True)) for row in reversed(rows)]
    for row in out:
        row["failed"] = bool(row["failed"])
    return out
