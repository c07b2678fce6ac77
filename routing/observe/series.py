"""Fixed-size time series for the dashboard's charts: the last ``span`` seconds in
buckets of ``step`` seconds, in a ring, so memory and cost never grow with traffic."""

from __future__ import annotations

import math

# Sums per bucket; rates and means are worked out on export.
FIELDS = (
    "requests",
    "errors",
    "tokens",
    "ttft_sum",
    "ttft_n",
    "duration_sum",
    "duration_n",
    "in_flight",  # peak sampled in the bucket
    "waiting",  # peak sampled in the bucket
)
_INDEX = {name: i for i, name in enumerate(FIELDS)}


class Series:
    def __init__(self, step: float = 2.0, span: float = 600.0) -> None:
        self.step = step
        self.size = max(1, int(span / step))
        self._ids = [-1] * self.size  # which bucket each ring slot holds
        self._data = [[0.0] * len(FIELDS) for _ in range(self.size)]

    def _bucket(self, t: float) -> list[float]:
        n = math.floor(t / self.step)
        slot = n % self.size
        if self._ids[slot] != n:
            self._ids[slot] = n
            self._data[slot] = [0.0] * len(FIELDS)
        return self._data[slot]

    def add(self, t: float, field: str, value: float = 1.0) -> None:
        self._bucket(t)[_INDEX[field]] += value

    def peak(self, t: float, field: str, value: float) -> None:
        bucket = self._bucket(t)
        i = _INDEX[field]
        bucket[i] = max(bucket[i], value)

    def spread(self, start: float, end: float, field: str, total: float) -> None:
        """Add ``total`` evenly over [start, end] (tokens over their decode window)."""
        if end - start <= 0 or total == 0:
            self.add(end, field, total)
            return
        start = max(start, end - (self.size - 1) * self.step)
        rate = total / (end - start)
        t = start
        while t < end:
            edge = min(end, (math.floor(t / self.step) + 1) * self.step)
            self.add(t, field, rate * (edge - t))
            t = edge

    def window(self, now: float, field: str, seconds: float) -> float:
        """The sum of ``field`` over the last ``seconds`` (whole buckets, ending now)."""
        last = math.floor(now / self.step)
        count = max(1, round(seconds / self.step))
        i = _INDEX[field]
        total = 0.0
        for n in range(last - count + 1, last + 1):
            slot = n % self.size
            if self._ids[slot] == n:
                total += self._data[slot][i]
        return total

    def export(self, now: float) -> dict[str, list[float | None]]:
        """Oldest to newest, one value per bucket, up to the last complete one (the
        current bucket is still filling)."""
        last = math.floor(now / self.step) - 1
        out: dict[str, list[float | None]] = {
            k: [] for k in ("rps", "tps", "errors", "ttft", "duration", "in_flight", "waiting")
        }
        for n in range(last - self.size + 1, last + 1):
            slot = n % self.size
            b = self._data[slot] if self._ids[slot] == n else None
            if b is None:
                for values in out.values():
                    values.append(0.0)
                out["ttft"][-1] = out["duration"][-1] = None
                continue
            get = dict(zip(FIELDS, b, strict=True))
            out["rps"].append(round(get["requests"] / self.step, 3))
            out["tps"].append(round(get["tokens"] / self.step, 1))
            out["errors"].append(get["errors"])
            out["ttft"].append(_mean(get["ttft_sum"], get["ttft_n"]))
            out["duration"].append(_mean(get["duration_sum"], get["duration_n"]))
            out["in_flight"].append(get["in_flight"])
            out["waiting"].append(get["waiting"])
        return out


def _mean(total: float, n: float) -> float | None:
    return round(total / n, 3) if n else None
