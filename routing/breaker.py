"""A circuit breaker per box: a box that fails fast stops attracting traffic.

    CLOSED ──(``failures`` in a row)──► OPEN ──(backoff elapsed)──► HALF_OPEN
      ▲                                  ▲                             │
      └──────────── a success ───────────┼──────── a failure ──────────┘ (backoff doubles)

Failures are what traffic sees before a response could be relayed: refused or reset
connections, timeouts, 5xx answers (Ollama's "server busy" 503 included). The clock is
passed in, so the machine is tested without sleeping. The state is a function of time:
``tick(now)`` may be called as often as anyone likes (every read of the fleet does), so no
single timer has to fire at the right instant for an open breaker to half-open.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Breaker:
    failures_to_open: int = 3
    backoff: float = 5.0
    max_backoff: float = 60.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    wait: float = 0.0  # the current backoff, while open

    def success(self) -> bool:
        """Record a success; True if the state changed."""
        before = self.state
        self.state, self.failures, self.wait = BreakerState.CLOSED, 0, 0.0
        return before is not BreakerState.CLOSED

    def failure(self, now: float) -> bool:
        """Record a failure at ``now``; True if the state changed."""
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.wait = min(self.max_backoff, self.wait * 2)
        elif self.state is BreakerState.CLOSED and self.failures >= self.failures_to_open:
            self.wait = self.backoff
        else:
            return False
        self.state, self.opened_at = BreakerState.OPEN, now
        return True

    def tick(self, now: float) -> bool:
        """Let a trial request through once the backoff has passed; True if changed."""
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.wait:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def recovered(self) -> bool:
        """The box came back (a probe reached it after it was down): try it now rather
        than wait out the backoff; True if the state changed."""
        if self.state is BreakerState.OPEN:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def reopens_in(self, now: float) -> float | None:
        if self.state is not BreakerState.OPEN:
            return None
        return max(0.0, self.opened_at + self.wait - now)
