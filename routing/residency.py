"""What the boxes hold in memory now, between probes: the last probe's view with the loads
this proxy has started since.

A probe reports each box's loaded models every few seconds; in between, the proxy itself
changes them: a request for a model a box does not hold makes the box load it, and a
full box evicts another model to make room. Deciding the next request on the probe's
view alone would believe the evicted model is still there, send its requests back and
make the box reload it (models thrash between boxes). ``Residency`` keeps each load this
proxy started, with the model it was expected to evict, and lays them over the probe's
view until a probe shows the load (the probe is the truth again) or ``MAX_AGE`` passes
(a load that never showed: it failed, or the model left again).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ollamux.routing.state import Fleet

MAX_AGE = 30.0  # seconds a load stands in for a probe that has not shown it


@dataclass(frozen=True, slots=True)
class Load:
    model: str
    evicts: str | None  # the model the box was expected to evict for it, if full
    started: float


class Residency:
    def __init__(self, max_age: float = MAX_AGE) -> None:
        self._max_age = max_age
        self._loads: dict[str, list[Load]] = {}  # box -> loads the probes have not shown
        self._base: Fleet | None = None
        self._view: Fleet | None = None
        self._expires = float("inf")  # when the oldest load stops counting

    def view(self, fleet: Fleet, now: float) -> Fleet:
        """``fleet`` (the probe's) with the loads started since laid over it."""
        if fleet is not self._base or now >= self._expires:
            self._base, self._view = fleet, None
            self._forget(fleet, now)
        if not self._loads:
            return fleet
        if self._view is None:
            boxes = []
            for box in fleet.boxes:
                loads = self._loads.get(box.name)
                if loads:
                    loaded = set(box.loaded)
                    for load in loads:
                        if load.evicts is not None:
                            loaded.discard(load.evicts)
                        loaded.add(load.model)
                    box = replace(box, loaded=frozenset(loaded))
                boxes.append(box)
            self._view = Fleet.of(tuple(boxes))
        return self._view

    def started(self, box: str, model: str, evicts: str | None, now: float) -> None:
        """A request was placed on ``box`` for ``model``, which it does not hold: the box
        loads it, evicting ``evicts`` if it was full."""
        self._loads.setdefault(box, []).append(Load(model, evicts, now))
        self._expires = min(self._expires, now + self._max_age)
        self._view = None

    def _forget(self, fleet: Fleet, now: float) -> None:
        """Drop the loads the probe shows (or whose box is gone) and the ones too old."""
        oldest = float("inf")
        for name in list(self._loads):
            box = fleet.by_name.get(name)
            kept = [
                load
                for load in self._loads[name]
                if box is not None
                and load.model not in box.loaded
                and now < load.started + self._max_age
            ]
            if kept:
                self._loads[name] = kept
                oldest = min(oldest, kept[0].started)
            else:
                del self._loads[name]
        self._expires = oldest + self._max_age
