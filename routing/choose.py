"""Which box serves a request: a pure function over an immutable snapshot.

The card's order: a box with the model **loaded and a free slot**, then any box with the
model and a **free slot**, then the **least saturated** (in_use / slots). Within a tier:

- healthy before degraded (a box whose breaker is half-open ranks as its probes say:
  its next requests are the trial, and a failure there is retried elsewhere);
- the conversation's box (affinity), unless it is busier than the least busy candidate of
  its tier by more than the load guard;
- for a model loaded nowhere: the box already loading it (no second load while one box's
  slots still cover the demand), then — with priority routing — config priority, then
  the box where loading costs least (fewest models busy there, fewest requests in flight);
- the less busy box; then an injected random tie-breaker, so equal boxes share the load.

Nothing here sends a request to a box that cannot serve the model.
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

    @property
    def load(self) -> float:
        return self.in_use / self.box.slots

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
    load_guard: float = 0.5  # how much busier than the rest the affinity box may be


class NoRoute(IntEnum):
    UNKNOWN_MODEL = 0  # no box advertises it (among boxes that answered probes)
    NO_HEALTHY_BOX = 1  # boxes advertise it but none is reachable now


def rank(fleet: Fleet, usage: Usage, req: Request, rand: Callable[[], float]) -> list[Candidate]:
    """Every box that can serve ``req.model`` now, best first."""
    candidates = [c for box in fleet.boxes if (c := _candidate(box, usage, req)) is not None]
    if not candidates:
        return []
    lightest = {
        tier: min(c.load for c in candidates if c.tier == tier)
        for tier in Tier
        if any(c.tier == tier for c in candidates)
    }
    busy = _busy_by_box(usage) if any(c.tier is Tier.FREE for c in candidates) else {}
    keyed = [(_key(c, req, lightest[c.tier], busy, rand()), c) for c in candidates]
    keyed.sort(key=lambda pair: pair[0])
    return [c for _, c in keyed]


def choose(
    fleet: Fleet, usage: Usage, req: Request, rand: Callable[[], float]
) -> Candidate | NoRoute:
    ranked = rank(fleet, usage, req, rand)
    if ranked:
        return ranked[0]
    return no_route(fleet, req)


def no_route(fleet: Fleet, req: Request) -> NoRoute:
    return NoRoute.NO_HEALTHY_BOX if fleet.knows(req.model) else NoRoute.UNKNOWN_MODEL


def _candidate(box: BoxState, usage: Usage, req: Request) -> Candidate | None:
    if not box.routable or req.model not in box.models or box.name in req.exclude:
        return None
    if req.kinds is not None and box.kind not in req.kinds:
        return None
    in_use = usage.get((box.name, req.model), 0)
    loaded = req.model in box.loaded
    if in_use >= box.slots:
        tier = Tier.SATURATED
    else:
        tier = Tier.LOADED_FREE if loaded else Tier.FREE
    return Candidate(box, tier, in_use, loaded)


def _busy_by_box(usage: Usage) -> dict[str, tuple[int, int]]:
    """Per box: (models with requests in flight, requests in flight)."""
    busy: dict[str, tuple[int, int]] = {}
    for (box, _model), n in usage.items():
        models, requests = busy.get(box, (0, 0))
        busy[box] = (models + 1, requests + n)
    return busy


def _key(
    c: Candidate,
    req: Request,
    lightest: float,
    busy: dict[str, tuple[int, int]],
    tie: float,
) -> tuple[float, ...]:
    box = c.box
    health = 0 if box.health is Health.HEALTHY else 1
    order = (box.priority, box.index) if req.priority_routing else (0, 0)
    sticky = 0 if box.name == req.affinity and c.load - lightest <= req.load_guard else 1
    if c.tier is Tier.SATURATED:
        # Least saturated first: a shorter queue beats priority and affinity.
        return (c.tier, c.load, health, *order, sticky, tie)
    if c.tier is Tier.FREE:
        loading_here = 0 if c.in_use > 0 else 1
        models_busy, in_flight = busy.get(box.name, (0, 0))
        return (c.tier, health, sticky, loading_here, *order, models_busy, in_flight, c.load, tie)
    return (c.tier, health, sticky, *order, c.load, tie)
