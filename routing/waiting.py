"""The waiting room: requests that found no free slot wait here, inside ollamux, instead
of in one box's queue, and are placed the moment a slot frees anywhere (late binding).

Order: per model, by priority class (``X-Priority: high|normal|low``), then first come,
first served (the dispatcher may reorder a class by each user's recent service: fair
share). Across models, the model whose head has waited longest goes first. The room
only keeps order and counts; the dispatcher decides placements.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from ollamux.routing.choose import Request

PRIORITIES = {"high": 0, "normal": 1, "low": 2}


@dataclass(frozen=True, slots=True)
class Ticket:
    """Who asks and how urgently: what orders the waiting room besides arrival."""

    user: str = "anonymous"
    priority: int = PRIORITIES["normal"]
    cost: int = 1  # estimated prompt tokens, counted as service when placed


@dataclass(eq=False)
class Waiter:
    req: Request
    ticket: Ticket
    enqueued: float
    future: asyncio.Future[Any]
    pin: str | None = None  # the conversation's box, waited for until pin_until
    pin_until: float = 0.0
    seq: int = 0
    predicted: float | None = None  # estimated seconds to first token when it arrived

    @property
    def rank(self) -> tuple[int, int]:
        return (self.ticket.priority, self.seq)


@dataclass
class WaitingRoom:
    max_waiting: int
    _queues: dict[str, list[Waiter]] = field(default_factory=dict)
    _seq: Iterator[int] = field(default_factory=count)
    _users: dict[str, int] = field(default_factory=dict)
    size: int = 0

    @property
    def full(self) -> bool:
        return self.size >= self.max_waiting

    def add(self, waiter: Waiter) -> None:
        waiter.seq = next(self._seq)
        queue = self._queues.setdefault(waiter.req.model, [])
        bisect.insort(queue, waiter, key=lambda w: w.rank)
        self.size += 1
        user = waiter.ticket.user
        self._users[user] = self._users.get(user, 0) + 1

    def remove(self, waiter: Waiter) -> None:
        queue = self._queues.get(waiter.req.model)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        self.size -= 1
        user = waiter.ticket.user
        self._users[user] -= 1
        if not self._users[user]:
            del self._users[user]
        if not queue:
            del self._queues[waiter.req.model]

    def in_order(self) -> list[list[Waiter]]:
        """Each model's queue (a copy), the longest-waiting head first."""
        queues = sorted(self._queues.values(), key=lambda q: min(w.enqueued for w in q))
        return [list(q) for q in queues]

    def oldest(self) -> float | None:
        return min((w.enqueued for q in self._queues.values() for w in q), default=None)

    def waiting_for(self, user: str) -> int:
        return self._users.get(user, 0)

    def by_user(self) -> dict[str, int]:
        return dict(self._users)

    def by_model(self) -> dict[str, int]:
        return {model: len(q) for model, q in self._queues.items()}
