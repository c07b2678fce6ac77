"""Per-user fair share of the waiting room (a virtual token counter, as in AIBrix's VTC).

Each user's service is the weighted tokens ollamux sent them over a sliding window:
input tokens counted (estimated from the body) when a request is placed, output tokens
when it ends. When requests wait, the next one placed is the one whose user has received
the least service lately, so one user's flood of batch requests cannot starve another's
interactive ones. Users are the client key's name, the ``X-User-Id`` header, OpenAI's
``user`` field, Anthropic's ``metadata.user_id``, else "anonymous".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

ANONYMOUS = "anonymous"
BYTES_PER_TOKEN = 4  # a rough prompt size when the box has not said yet


def user_of(key_name: str | None, headers: Mapping[str, str], doc: Mapping[str, Any]) -> str:
    if key_name:
        return key_name
    header = headers.get("x-user-id", "").strip()
    if header:
        return header[:128]
    user = doc.get("user")
    if isinstance(user, str) and user:
        return user[:128]
    metadata = doc.get("metadata")  # Anthropic's Messages API says who asks here
    user = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    if isinstance(user, str) and user:
        return user[:128]
    return ANONYMOUS


def estimate_tokens(body: bytes) -> int:
    return max(1, len(body) // BYTES_PER_TOKEN)


class FairShare:
    def __init__(self, window: float, input_weight: float, output_weight: float) -> None:
        self._window = window
        self._in = input_weight
        self._out = output_weight
        self._events: dict[str, deque[tuple[float, float]]] = {}
        self._totals: dict[str, float] = {}

    def retune(self, window: float, input_weight: float, output_weight: float) -> None:
        self._window, self._in, self._out = window, input_weight, output_weight

    def placed(self, user: str, prompt_tokens: int, now: float) -> None:
        self._add(user, prompt_tokens * self._in, now)

    def finished(self, user: str, output_tokens: int, now: float) -> None:
        if output_tokens:
            self._add(user, output_tokens * self._out, now)

    def service(self, user: str, now: float) -> float:
        self._expire(user, now)
        return self._totals.get(user, 0.0)

    def users(self, now: float) -> dict[str, float]:
        for user in list(self._events):
            self._expire(user, now)
        return dict(self._totals)

    def _add(self, user: str, amount: float, now: float) -> None:
        # One bucket per user per second: memory follows users and the window, not the
        # request rate.
        events = self._events.setdefault(user, deque())
        second = float(int(now))
        if events and events[-1][0] == second:
            events[-1] = (second, events[-1][1] + amount)
        else:
            events.append((second, amount))
        self._totals[user] = self._totals.get(user, 0.0) + amount
        self._expire(user, now)

    def _expire(self, user: str, now: float) -> None:
        events = self._events.get(user)
        if events is None:
            return
        horizon = now - self._window
        while events and events[0][0] <= horizon:
            self._totals[user] -= events.popleft()[1]
        if not events:
            del self._events[user]
            del self._totals[user]
