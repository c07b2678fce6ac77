"""Tuning help: how fast each (box, model) decodes at each concurrency, and a suggested
``max_concurrent``.

The *level* of a (box, model) is the number of ollamux requests in flight on it. The
ledger's changes give, exactly, how long each pair spent at each level. Each finished
request spreads its output tokens evenly over the time it decoded (the box's own
``eval_duration``) and hands them to the levels that time covered.
Per level we then know

- total throughput, tokens / seconds spent at that level: a measurement, so it shows
  what per-request rates hide (prompt processing, and requests queued inside a box whose
  ``max_concurrent`` is above its own ``OLLAMA_NUM_PARALLEL``); time the model spent
  loading (the box's ``load_duration``) is left out: it is about swaps, not concurrency;
- the decode rate of one request (``eval_count / eval_duration``, as the box measured
  it), filed under the time-weighted mean level while it decoded, rounded.

``suggest()`` walks the levels upwards and stops where total throughput stops rising
(going from p to c in flight must add at least ``MARGINAL`` of the (c - p) / p that
throughput growing in proportion would add) or where one request decodes more than
``bound`` times slower than at the lowest level seen.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ollamux.routing.accounting import Counts
from ollamux.routing.state import Usage

Key = tuple[str, str]  # (box, canonical model)

MARGINAL = 0.25  # more slots must add a quarter of what proportional growth would
MIN_SAMPLES = 3  # requests seen at a level before it counts
LOAD_MIN = 0.05  # seconds: a shorter load_duration is the box finding the model loaded
_MEMORY = 4096  # level changes remembered per (box, model)


class Timeline:
    """Requests in flight on one (box, model) over time: the recent level changes, with
    the running integral (area) so a mean over any remembered interval is cheap."""

    __slots__ = ("areas", "levels", "times")

    def __init__(self, now: float) -> None:
        self.times = [now]
        self.areas = [0.0]
        self.levels = [0]

    def set(self, level: int, now: float) -> tuple[int, float]:
        """Move to ``level``; return the level left and how long it lasted."""
        old, since = self.levels[-1], self.times[-1]
        if level == old:
            return old, 0.0
        self.areas.append(self.area(now))
        self.times.append(now)
        self.levels.append(level)
        if len(self.times) > _MEMORY:
            half = _MEMORY // 2
            del self.times[:half], self.areas[:half], self.levels[:half]
        return old, now - since

    def area(self, t: float) -> float:
        i = bisect_right(self.times, t) - 1
        if i < 0:  # older than remembered: count from the first remembered change
            i, t = 0, self.times[0]
        return self.areas[i] + self.levels[i] * (t - self.times[i])

    def mean(self, start: float, end: float) -> float:
        if end - start <= 1e-9:
            return float(self.levels[max(0, bisect_right(self.times, end) - 1)])
        return (self.area(end) - self.area(start)) / (end - start)

    def segments(self, start: float, end: float) -> Iterator[tuple[int, float]]:
        """(level, seconds) for each stretch of [start, end] at one level."""
        i = max(0, bisect_right(self.times, start) - 1)
        t = max(start, self.times[0])
        while t < end:
            edge = self.times[i + 1] if i + 1 < len(self.times) else end
            edge = min(edge, end)
            if edge > t:
                yield self.levels[i], edge - t
            t, i = edge, i + 1


@dataclass(slots=True)
class Level:
    samples: int = 0  # requests filed at this level
    decode_samples: int = 0
    decode_sum: float = 0.0  # Σ per-request decode rate (tokens/s)
    tokens: float = 0.0  # output tokens produced while at this level
    seconds: float = 0.0  # time spent at this level
    loading: float = 0.0  # of which the model was loading (left out of throughput)

    @property
    def decode_rate(self) -> float | None:
        return self.decode_sum / self.decode_samples if self.decode_samples else None

    @property
    def busy(self) -> float:
        return self.seconds - self.loading

    @property
    def total(self) -> float:
        return self.tokens / self.busy if self.busy > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Suggestion:
    value: int | None  # None: not enough seen to say
    reason: str


class Tuning:
    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.timelines: dict[Key, Timeline] = {}
        self.levels: dict[Key, dict[int, Level]] = {}
        self.dirty: set[tuple[str, str, int]] = set()
        self._busy: set[Key] = set()  # pairs with requests in flight at the last change
        self._loads_seen: dict[Key, float] = {}  # end of the last load left out, per pair

    def usage_changed(self, usage: Usage, now: float) -> None:
        for key in self._busy.difference(usage):
            self._move(key, 0, now)
        for key, level in usage.items():
            self._move(key, level, now)
        self._busy = set(usage)

    def _move(self, key: Key, level: int, now: float) -> None:
        timeline = self.timelines.get(key)
        if timeline is None:
            timeline = self.timelines[key] = Timeline(now)
        old, lasted = timeline.set(level, now)
        if old > 0 and lasted > 0:
            self._level(key, old).seconds += lasted

    def _level(self, key: Key, level: int) -> Level:
        self.dirty.add((*key, level))
        return self.levels.setdefault(key, {}).setdefault(level, Level())

    def finished(self, key: Key, started: float, ended: float, counts: Counts) -> int | None:
        """File one successful generation; return the level it was filed under.

        Its tokens came out during its decode window, the last ``eval_duration`` before
        it ended, when the box says; else during its time on the box (``total_duration``,
        which leaves out ollamux's waiting room), else during the whole exchange.
        """
        window = counts.decode_seconds or counts.total_seconds
        if window is not None:
            started = max(started, ended - window)
        duration = ended - started
        timeline = self.timelines.get(key)
        if timeline is None or counts.output_tokens <= 0 or duration <= 0:
            return None
        per_second = counts.output_tokens / duration
        for level, seconds in timeline.segments(started, ended):
            if level > 0:
                self._level(key, level).tokens += per_second * seconds
        self._leave_out_load(key, timeline, ended, counts)
        # The mean includes the request's own slot (freed just before it finished).
        level = max(1, round(timeline.mean(started, ended)))
        stats = self._level(key, level)
        stats.samples += 1
        rate = counts.decode_rate
        if rate is not None:
            stats.decode_samples += 1
            stats.decode_sum += rate
        return level

    def _leave_out_load(self, key: Key, timeline: Timeline, ended: float, counts: Counts) -> None:
        """Time the model spent loading is about model swaps, not concurrency. Requests
        that waited for the same load each report it: it is left out once."""
        load, total = counts.load_seconds, counts.total_seconds
        if load is None or total is None or load < LOAD_MIN:
            return
        start = max(ended - total, self._loads_seen.get(key, -float("inf")))
        end = ended - total + load
        if end <= start:
            return
        self._loads_seen[key] = end
        for level, seconds in timeline.segments(start, end):
            if level > 0:
                self._level(key, level).loading += seconds

    def table(self, slots: Mapping[Key, int]) -> list[dict[str, object]]:
        """Per (box, model): each level's figures and the suggestion, for the dashboard."""
        rows: list[dict[str, object]] = []
        for (box, model), levels in sorted(self.levels.items()):
            seen = {c: s for c, s in levels.items() if s.samples}
            if not seen:
                continue
            picked = suggest(seen, self.bound)
            rows.append(
                {
                    "box": box,
                    "model": model,
                    "max": slots.get((box, model)),
                    "suggested": picked.value,
                    "reason": picked.reason,
                    "levels": [
                        {
                            "concurrency": c,
                            "samples": s.samples,
                            "decode_tps": _round(s.decode_rate),
                            "total_tps": _round(s.total),
                        }
                        for c, s in sorted(seen.items())
                    ],
                }
            )
        return rows


def suggest(levels: Mapping[int, Level], bound: float) -> Suggestion:
    """The concurrency past which one more request in flight stops paying off."""
    usable = sorted(c for c, s in levels.items() if s.samples >= MIN_SAMPLES and s.busy > 0)
    if not usable:
        return Suggestion(None, "not enough requests seen yet")
    if len(usable) == 1:
        return Suggestion(None, f"only {usable[0]} in flight seen often enough so far")
    base = levels[usable[0]].decode_rate
    pick, best = usable[0], levels[usable[0]].total
    for c in usable[1:]:
        stats = levels[c]
        rate = stats.decode_rate
        if base is not None and rate is not None and rate * bound < base:
            return Suggestion(pick, f"at {c} in flight each request decodes over {bound:g}x slower")
        if stats.total < best * (1 + MARGINAL * (c - pick) / pick):
            return Suggestion(pick, f"total throughput stops rising at {c} in flight")
        pick, best = c, stats.total
    return Suggestion(pick, f"still rising at {pick} in flight, the most seen: try more")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
