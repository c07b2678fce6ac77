"""Which box serves a request: a pure function over an immutable snapshot.

The card's order: a box with the model **loaded and a free slot**, then any box with the
model and a **free slot**, then the **least saturated** (in_use / slots). Health, priority
and conversation affinity only order boxes within a tier; they never send a request to a
box that cannot serve the model. Randomness comes in as an argument, so equal boxes share
load evenly and tests stay deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from backends.state import BoxState, Fleet, Health, Usage


class Tier(IntEnum):
    LOADED_FREE = 0
    FREE = 1
    SATURATED = 2


@dataclass(frozen=True, slots=True)
class Candidate:
    box: BoxState
    tier: Tier
    in_use: int
    loaded: bool

    def describe(self) -> str:
        state = "model loaded" if self.loaded else "model not loaded"
        return f"{self.box.name}: {state}, {self.in_use}/{self.box.slots} slots"


@dataclass(frozen=True, slots=True)
class Request:
    model: str  # canonical name
    affinity: str | None = None  # box that served this conversation before
    priority_routing: bool = False
    exclude: frozenset[str] = frozenset()  # boxes that already failed this request
    kinds: frozenset[str] | None = None  # box kinds that can serve this route; None: all


class NoRoute(IntEnum):
    UNKNOWN_MODEL = 0  # no box advertises it (among boxes that answered probes)
    NO_HEALTHY_BOX = 1  # boxes advertise it but none is reachable now


def rank(fleet: Fleet, usage: Usage, req: Request, rand: Callable[[], float]) -> list[Candidate]:
    """Every box that can serve ``req.model`` now, best first."""
    keyed: list[tuple[tuple[float, ...], Candidate]] = []
    for box in fleet.boxes:
        if not box.routable or req.model not in box.models or box.name in req.exclude:
            continue
        if req.kinds is not None and box.kind not in req.kinds:
            continue
        in_use = usage.get((box.name, req.model), 0)
        loaded = req.model in box.loaded
        if in_use >= box.slots:
            tier = Tier.SATURATED
        else:
            tier = Tier.LOADED_FREE if loaded else Tier.FREE
        candidate = Candidate(box, tier, in_use, loaded)
        keyed.append((_key(box, tier, in_use, req, rand()), candidate))
    keyed.sort(key=lambda pair: pair[0])
    return [c for _, c in keyed]


def choose(
    fleet: Fleet, usage: Usage, req: Request, rand: Callable[[], float]
) -> Candidate | NoRoute:
    ranked = rank(fleet, usage, req, rand)
    if ranked:
        return ranked[0]
    return NoRoute.NO_HEALTHY_BOX if fleet.knows(req.model) else NoRoute.UNKNOWN_MODEL


def _key(box: BoxState, tier: Tier, in_use: int, req: Request, tie: float) -> tuple[float, ...]:
    load = in_use / box.slots
    health = 0 if box.health is Health.HEALTHY else 1
    order = (box.priority, box.index) if req.priority_routing else (0, 0)
    sticky = 0 if box.name == req.affinity else 1
    if tier is Tier.SATURATED:
        # Least saturated first: a shorter queue beats priority and affinity.
        return (tier, load, health, *order, sticky, tie)
    return (tier, health, *order, sticky, load, tie)
