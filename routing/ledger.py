"""Slots in use: the ``SlotStore`` seam, its in-memory ``Ledger``, and the ``Lease``.

The dispatcher is the only caller: it decides on ``usage`` and takes the slot in one
synchronous step (nothing can interleave between the two), and it hands out each slot as
a ``Lease`` whose ``release()`` is idempotent, so every exit path (finished, upstream
error, client gone, cancelled) can call it and the count drops exactly once. Counts never
go negative: a key whose count reaches zero is removed.

Replicas that share a fleet plug another ``SlotStore`` in here (kept in Redis); the core
never knows which.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Protocol

from ollamux.routing.state import Usage


class SlotStore(Protocol):
    """Counts of slots in use per (box, model), as the whole fleet sees them."""

    @property
    def usage(self) -> Usage: ...

    def take(self, box: str, model: str) -> None:
        """One more slot of ``model`` on ``box`` is in use."""
        ...

    def give(self, box: str, model: str) -> None:
        """One slot of ``model`` on ``box`` is free again."""
        ...


class Lease:
    """One reserved slot. ``release`` hands it back once, whatever calls it how often."""

    __slots__ = ("_free", "box", "model", "reason", "released", "sharing")

    def __init__(self, box: str, model: str, free: Callable[[Lease], None]) -> None:
        self.box = box
        self.model = model
        self.reason = ""  # why this box: the X-Ollamux-Route header
        self.sharing = 1  # requests of the model the box ran once this one was placed
        self.released = False
        self._free = free

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._free(self)


class Ledger:
    """The in-memory ``SlotStore`` of one process. ``on_change`` hears every change."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._in_use: dict[tuple[str, str], int] = {}
        self._view: Usage = MappingProxyType(self._in_use)
        self._on_change = on_change

    @property
    def usage(self) -> Usage:
        return self._view

    def in_flight(self) -> int:
        return sum(self._in_use.values())

    def take(self, box: str, model: str) -> None:
        key = (box, model)
        self._in_use[key] = self._in_use.get(key, 0) + 1
        self._on_change()

    def give(self, box: str, model: str) -> None:
        key = (box, model)
        left = self._in_use.get(key, 0) - 1
        if left > 0:
            self._in_use[key] = left
        else:
            self._in_use.pop(key, None)
        self._on_change()
