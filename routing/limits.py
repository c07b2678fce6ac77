"""Per-box request and token budgets (``rpm_limit``, ``tpm_limit``) and 429 cooldowns.

Remote OpenAI-compatible boxes cap requests and tokens per minute. ollamux counts what
it sent each box over the last 60 s: a box at its limit is left out until its window
frees, and among boxes under their limits the one using the smallest share is preferred
(used / limit, not absolute use). A box that answers 429 rests for its ``Retry-After``
(or ``routing.cooldown``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

WINDOW = 60.0


class BoxLimits:
    def __init__(self, name: str, rpm: int | None, tpm: int | None) -> None:
        self.name = name
        self.rpm = rpm
        self.tpm = tpm
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_sum = 0
        self.cooling_until = 0.0

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def sent(self, now: float) -> None:
        if self.rpm is not None:
            self._requests.append(now)

    def tokens(self, count: int, now: float) -> None:
        if self.tpm is not None and count:
            self._tokens.append((now, count))
            self._token_sum += count

    def utilisation(self, now: float) -> float:
        self._expire(now)
        ratios = [0.0]
        if self.rpm is not None:
            ratios.append(len(self._requests) / self.rpm)
        if self.tpm is not None:
            ratios.append(self._token_sum / self.tpm)
        return max(ratios)

    def frees_at(self, now: float) -> float | None:
        """When the oldest counted event leaves the window (worth another look)."""
        self._expire(now)
        starts = [q[0] for q in (self._requests,) if q]
        if self._tokens:
            starts.append(self._tokens[0][0])
        return min(starts) + WINDOW if starts else None

    def cool(self, until: float) -> None:
        self.cooling_until = max(self.cooling_until, until)

    def _expire(self, now: float) -> None:
        horizon = now - WINDOW
        while self._requests and self._requests[0] <= horizon:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= horizon:
            self._token_sum -= self._tokens.popleft()[1]


def retry_after(value: str | None, default: float) -> float:
    """Seconds from a Retry-After header (seconds form); the default when absent or odd."""
    if value:
        try:
            seconds = float(value.strip())
        except ValueError:
            return default
        if 0 < seconds <= 3600:
            return seconds
    return default


def cooling(boxes: Iterable[BoxLimits], now: float) -> frozenset[str]:
    return frozenset(b.name for b in boxes if b.cooling_until > now)
