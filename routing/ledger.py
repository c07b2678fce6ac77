"""The only place that counts slots in use.

Select-and-reserve happens under one ``asyncio.Lock``; each reservation is a ``Lease``
whose ``release()`` is idempotent, so every exit path (finished, upstream error, client
gone, cancelled) can call it and the count is decremented exactly once. Counts never go
negative: a key whose count reaches zero is removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import MappingProxyType
from typing import TypeVar

from ollamux.routing.state import Usage

T = TypeVar("T")


class Lease:
    __slots__ = ("_ledger", "box", "model", "reason", "released")

    def __init__(self, ledger: Ledger, box: str, model: str) -> None:
        self._ledger = ledger
        self.box = box
        self.model = model
        self.reason = ""  # why this box: the X-Ollamux-Route header
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._ledger._free(self.box, self.model)


class Ledger:
    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._lock = asyncio.Lock()
        self._in_use: dict[tuple[str, str], int] = {}
        self._view: Usage = MappingProxyType(self._in_use)
        self._on_change = on_change
        self.on_release: Callable[[], None] = lambda: None  # a slot freed: place waiters

    @property
    def usage(self) -> Usage:
        return self._view

    def in_flight(self) -> int:
        return sum(self._in_use.values())

    async def lease(self, decide: Callable[[Usage], tuple[str, str] | T]) -> Lease | T:
        """Run ``decide`` on the current usage under the lock; reserve what it picks.

        ``decide`` returns ``(box, model)`` to reserve, or anything else to reserve nothing
        (that value is returned as is, for the caller to act on).
        """
        async with self._lock:
            picked = decide(self._view)
            if not isinstance(picked, tuple):
                return picked
            return self.reserve(*picked)

    def reserve(self, box: str, model: str) -> Lease:
        """Reserve a slot now. Only for synchronous callers that decided on the current
        usage without awaiting in between (``lease`` under the lock, the waiting room's
        drain): nothing can interleave, so the decision still holds."""
        key = (box, model)
        self._in_use[key] = self._in_use.get(key, 0) + 1
        self._on_change()
        return Lease(self, box, model)

    def changed(self) -> None:
        self._on_change()

    def _free(self, box: str, model: str) -> None:
        key = (box, model)
        left = self._in_use.get(key, 0) - 1
        if left > 0:
            self._in_use[key] = left
        else:
            self._in_use.pop(key, None)
        self._on_change()
        self.on_release()
