"""What the proxy has done: totals, rates, recent requests, charts and tuning figures.

Fed by two hooks in ``Services``: ``finished`` (an exchange ended: its counts are read
from ``Outcome.tail`` once, here, and handed on to ``Metrics``) and ``usage_changed`` (a
slot was taken or freed). A one-second tick samples the
waiting room and in-flight count and, every few seconds, hands what changed to
``History`` (SQLite, in a worker thread). ``view()`` is the dashboard's ``stats`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any

from ollamux.backends.relay import Outcome
from ollamux.routing.accounting import NOTHING, Counts, read_counts
from ollamux.routing.explain import predicted_ttft
from ollamux.routing.observe.history import Batch, History
from ollamux.routing.observe.metrics import Metrics
from ollamux.routing.observe.series import Series
from ollamux.routing.observe.status import Snapshot
from ollamux.routing.observe.tuning import Key, Level, Tuning
from ollamux.routing.settings import StatsSettings
from ollamux.routing.state import Usage

log = logging.getLogger("ollamux.stats")

RECENT = 50  # requests shown on the dashboard
TICK = 1.0  # seconds between two samples of the queue
SAVE_EVERY = 5  # ticks between two writes to the history file
RATE_WINDOW = 10.0  # seconds over which a box's requests/s and tokens/s are averaged


@dataclass(slots=True)
class Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0


class Stats:
    def __init__(
        self,
        settings: StatsSettings,
        metrics: Metrics,
        snapshot: Callable[[], Snapshot],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.history = History(settings.path, settings.history)
        self.metrics = metrics
        self.tuning = Tuning(settings.latency_bound)
        self.series = Series()
        self.box_series: dict[str, Series] = {}
        self.totals: dict[Key, Totals] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._snapshot = snapshot
        self._clock = clock
        self._wall = wall
        self._dirty: set[Key] = set()
        self._unsaved: list[dict[str, Any]] = []
        self._ticker: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        try:
            stored = await self.history.open(RECENT)
        except (sqlite3.Error, OSError) as exc:  # statistics are not worth an outage
            log.error(
                "cannot use %s for statistics (%s); keeping them in memory", self.history.path, exc
            )
            self.history = History(None, self.history.keep)
            stored = await self.history.open(RECENT)
        for box, model, *values in stored.totals:
            self.totals[(box, model)] = Totals(*values)
        self.recent.extend(stored.requests)
        for box, model, level, samples, decode_n, *sums in stored.levels:
            figures = Level(samples, decode_n, *sums)
            self.tuning.levels.setdefault((box, model), {})[level] = figures
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.history.save(self._batch())
        await self.history.close()

    async def _tick_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK)
            try:
                self.sample()
            except Exception:  # a figure is not worth the loop
                log.exception("could not sample the queue")
            ticks += 1
            if ticks % SAVE_EVERY == 0:
                # Shielded: stop() cancels this loop, never a write half-way.
                await asyncio.shield(self.history.save(self._batch()))

    # -- hooks ------------------------------------------------------------------------

    def finished(self, outcome: Outcome) -> Counts:
        counts = read_counts(outcome.tail) if 0 < outcome.status < 400 else NOTHING
        now = self._clock()
        ended = outcome.ended or now
        box = outcome.box or ""
        key = (box, outcome.model)
        failed = bool(outcome.error) or outcome.status >= 500
        totals = self.totals.setdefault(key, Totals())
        totals.requests += 1
        totals.errors += failed
        totals.prompt_tokens += counts.prompt_tokens
        totals.output_tokens += counts.output_tokens
        self._dirty.add(key)
        ttft = None if outcome.first_byte is None else outcome.first_byte - outcome.started
        duration = ended - outcome.started
        # No box: the request was never placed (unknown model, no capacity, gave up).
        for series in (self.series, self._box_series(box)) if box else (self.series,):
            self._chart(series, ended, failed, ttft, duration, counts)
        if box and 0 < outcome.status < 400 and not outcome.error and not outcome.client_gone:
            self.tuning.finished(key, outcome.sent or outcome.started, ended, counts)
        self.metrics.finished(outcome, counts)
        row = {
            "at": round(self._wall() - (now - ended), 3),
            "box": box,
            "model": outcome.model,
            "route": outcome.path,
            "status": outcome.status,
            "waited": None if outcome.sent is None else round(outcome.sent - outcome.started, 4),
            "ttft": None if ttft is None else round(ttft, 4),
            "duration": round(duration, 4),
            "prompt_tokens": counts.prompt_tokens,
            "output_tokens": counts.output_tokens,
            "decode_tps": None if counts.decode_rate is None else round(counts.decode_rate, 1),
            "error": outcome.error or ("client left" if outcome.client_gone else None),
            "why": outcome.route,  # the box's reason (X-Ollamux-Route)
            "failed": failed,
        }
        self.recent.append(row)
        self._unsaved.append(row)
        return counts

    def usage_changed(self, usage: Usage) -> None:
        self.tuning.usage_changed(usage, self._clock())

    def sample(self) -> None:
        """Record the waiting room and slots in use in the current chart bucket."""
        snap = self._snapshot()
        now = self._clock()
        self.series.peak(now, "waiting", float(snap.get("queue", {}).get("waiting", 0)))
        self.series.peak(now, "in_flight", float(snap.get("totals", {}).get("in_flight", 0)))
        for ep in snap.get("endpoints", []):
            series = self._box_series(ep["name"])
            series.peak(now, "in_flight", float(sum(m["in_use"] for m in ep["models"])))

    # -- views ------------------------------------------------------------------------

    def lifetime_requests(self) -> tuple[int, int]:
        """Requests and failed requests, since the first start when stats.path is set."""
        total = self.lifetime()
        return total.requests, total.errors

    def lifetime(self) -> Totals:
        total = Totals()
        for t in self.totals.values():
            total.requests += t.requests
            total.errors += t.errors
            total.prompt_tokens += t.prompt_tokens
            total.output_tokens += t.output_tokens
        return total

    def view(self, snapshot: Snapshot) -> dict[str, Any]:
        """The dashboard's ``stats`` event: rates, charts, recent requests, tuning."""
        now = self._clock()
        slots = {
            (ep["name"], m["name"]): m["max"]
            for ep in snapshot.get("endpoints", [])
            for m in ep.get("models", [])
        }
        return {
            "at": round(self._wall(), 3),
            "step": self.series.step,
            "totals": _asdict(self.lifetime()),
            "boxes": {
                ep["name"]: self._box_view(ep["name"], now) for ep in snapshot.get("endpoints", [])
            },
            "series": self.series.export(now),
            # With what the estimate said on arrival (routing.estimate), read from ``why``
            # (kept rows from the history have it too), against ``ttft``.
            "recent": [
                {**r, "predicted_ttft": predicted_ttft(r.get("why") or "")}
                for r in reversed(self.recent)
            ],
            "tuning": self.tuning.table(slots),
        }

    def _box_view(self, name: str, now: float) -> dict[str, Any]:
        series = self._box_series(name)
        per_model = [t for (box, _), t in self.totals.items() if box == name]
        return {
            "rps": round(series.window(now, "requests", RATE_WINDOW) / RATE_WINDOW, 2),
            "tps": round(series.window(now, "tokens", RATE_WINDOW) / RATE_WINDOW, 1),
            "requests": sum(t.requests for t in per_model),
            "errors": sum(t.errors for t in per_model),
            "output_tokens": sum(t.output_tokens for t in per_model),
        }

    # -- internals --------------------------------------------------------------------

    def _box_series(self, box: str) -> Series:
        series = self.box_series.get(box)
        if series is None:
            series = self.box_series[box] = Series()
        return series

    @staticmethod
    def _chart(
        series: Series,
        ended: float,
        failed: bool,
        ttft: float | None,
        duration: float,
        counts: Counts,
    ) -> None:
        series.add(ended, "requests")
        if failed:
            series.add(ended, "errors")
        if ttft is not None:
            series.add(ended, "ttft_sum", ttft)
            series.add(ended, "ttft_n")
        series.add(ended, "duration_sum", duration)
        series.add(ended, "duration_n")
        if counts.output_tokens:
            decode = counts.decode_seconds or duration
            series.spread(ended - decode, ended, "tokens", counts.output_tokens)

    def _batch(self) -> Batch:
        batch = Batch(
            totals=[(*key, *astuple(self.totals[key])) for key in sorted(self._dirty)],
            requests=self._unsaved,
        )
        for box, model, level in sorted(self.tuning.dirty):
            figures = astuple(self.tuning.levels[(box, model)][level])
            batch.levels.append((box, model, level, *figures))
        self._dirty, self._unsaved = set(), []
        self.tuning.dirty = set()
        return batch


def _asdict(totals: Totals) -> dict[str, int]:
    return {
        "requests": totals.requests,
        "errors": totals.errors,
        "prompt_tokens": totals.prompt_tokens,
        "output_tokens": totals.output_tokens,
    }
