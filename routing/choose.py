"""Which box serves a request: a pure function over an immutable snapshot.

``rank()`` keeps the boxes that can serve the model now (healthy, breaker not open, not
excluded by this request's failures or route, not cooling down after a 429, under their
rate limits) and orders them by the request's strategy (``routing.policies``). The
default is the card's order: a box with the model **loaded and a free slot**, then any
box with the model and a **free slot**, then the **least saturated** (in_use / slots);
health, affinity, priority, load cost and the estimate (``routing.estimate``: seconds to
first token and to finish, from learned costs) only order boxes within a tier.

"Free" is honest (``honest()``, under ``default`` and ``fastest``): a free slot on a box
that does not hold the model is no free slot when loading there would evict a model in
use (while another box can serve), or when, by what traffic has shown, the load alone
outlasts the wait for a box that has the model loaded. Such a box ranks as saturated,
so the request waits for the loaded model instead of thrashing models between boxes.
Randomness comes in as an argument, so equal boxes share load evenly and tests stay
deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum

from ollamux.routing.breaker import BreakerState
from ollamux.routing.estimate import Ask, Estimate, estimate
from ollamux.routing.policies import NO_SIGNALS, POLICIES, Context, Signals
from ollamux.routing.state import BoxState, Fleet, Usage


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
    estimate: Estimate | None = None  # under strategies that estimate (ESTIMATED)
    note: str = ""  # why a free slot does not count as free

    @property
    def load(self) -> float:
        return self.in_use / self.box.slots

    @property
    def weight(self) -> float:
        return self.box.weight

    def describe(self) -> str:
        state = "model loaded" if self.loaded else "model not loaded"
        text = f"{self.box.name}: {state}, {self.in_use}/{self.box.slots} slots"
        if self.note:
            text += f", {self.note}"
        if self.estimate is not None:
            text += f", {self.estimate.describe()}"
        return text


@dataclass(frozen=True, slots=True)
class Request:
    model: str  # canonical name
    affinity: str | None = None  # box that served this conversation before
    priority_routing: bool = False
    exclude: frozenset[str] = frozenset()  # boxes that already failed this request
    kinds: frozenset[str] | None = None  # box kinds that can serve this route; None: all
    load_guard: float = 0.5  # how much busier than the rest the affinity box may be
    strategy: str = "default"  # a key of routing.policies.POLICIES
    prompt_tokens: int = 0  # the prompt's size, roughly (0: unknown)
    cached_tokens: int = 0  # the conversation's prefix its affinity box still caches
    conversation: str | None = None  # its key (affinity), when it has one


# Strategies that rank by the estimate, and whose free slots must be honest.
ESTIMATED = frozenset({"default", "fastest"})


class NoRoute(IntEnum):
    UNKNOWN_MODEL = 0  # no box advertises it (among boxes that answered probes)
    NO_HEALTHY_BOX = 1  # boxes advertise it but none is reachable now


def rank(
    fleet: Fleet,
    usage: Usage,
    req: Request,
    rand: Callable[[], float],
    signals: Signals = NO_SIGNALS,
) -> list[Candidate]:
    """Every box that can serve ``req.model`` now, best first."""
    candidates = [
        c for box in fleet.boxes if (c := _candidate(box, usage, req, signals)) is not None
    ]
    if not candidates:
        return []
    if req.strategy in ESTIMATED:
        candidates = honest(_estimated(candidates, fleet, usage, req, signals))
    lightest: dict[int, float] = {}
    for c in candidates:
        lightest[c.tier] = min(c.load, lightest.get(c.tier, c.load))
    busy = _busy_by_box(usage) if any(c.tier is Tier.FREE for c in candidates) else {}
    ctx = Context(req, signals, lightest, busy, len(fleet.boxes))
    policy = POLICIES[req.strategy]
    keyed = [(policy(c, ctx, rand()), c) for c in candidates]
    keyed.sort(key=lambda pair: pair[0])
    return [c for _, c in keyed]


def choose(
    fleet: Fleet,
    usage: Usage,
    req: Request,
    rand: Callable[[], float],
    signals: Signals = NO_SIGNALS,
) -> Candidate | NoRoute:
    ranked = rank(fleet, usage, req, rand, signals)
    if ranked:
        return ranked[0]
    return no_route(fleet, req)


def no_route(fleet: Fleet, req: Request) -> NoRoute:
    """Why nothing can serve ``req``: a model some box has advertised (even one down now)
    is unavailable, as is any model while no box is reachable (it may be on one of them);
    only a model that reachable boxes do not list is unknown."""
    if fleet.knows(req.model) or not any(b.reachable for b in fleet.boxes):
        return NoRoute.NO_HEALTHY_BOX
    return NoRoute.UNKNOWN_MODEL


def unavailable_reason(fleet: Fleet, model: str) -> str:
    """For people: the boxes that could have served ``model`` and why each cannot now."""
    boxes = [b for b in fleet.boxes if model in b.models] or list(fleet.boxes)
    if not boxes:
        return "no box is configured"
    return "; ".join(_why_not(b, model) for b in boxes)


def unseen_boxes(fleet: Fleet) -> list[str]:
    """Boxes that have never answered a probe: a model missing elsewhere may be there."""
    return [b.name for b in fleet.boxes if not b.answered]


def _why_not(box: BoxState, model: str) -> str:
    if not box.reachable:
        why = box.error or ("not probed yet" if box.health == "unknown" else "unreachable")
        return why if why.startswith(f"box {box.name}") else f"box {box.name}: {why}"
    if box.draining:
        return f"box {box.name} is draining"
    if box.breaker is BreakerState.OPEN:
        health = f"{box.health} to its probes"
        return f"box {box.name} failed its last requests (circuit breaker open; {health})"
    if model in box.failing:
        return f"box {box.name}: the model is failing there (its own breaker is open)"
    return f"box {box.name} is resting (rate limit, or after a 429) or cannot take this route"


def _candidate(box: BoxState, usage: Usage, req: Request, signals: Signals) -> Candidate | None:
    if not box.routable or req.model not in box.models or box.name in req.exclude:
        return None
    if req.model in box.failing:  # the model fails on this box (its own breaker is open)
        return None
    if box.name in signals.cooling or signals.utilisation.get(box.name, 0.0) >= 1.0:
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


def _estimated(
    candidates: list[Candidate], fleet: Fleet, usage: Usage, req: Request, signals: Signals
) -> list[Candidate]:
    ask = Ask(req.model, req.prompt_tokens, req.affinity, req.cached_tokens)
    waiting = signals.waiting.get(req.model, 0)
    full = sum(1 for c in candidates if c.tier is Tier.SATURATED) or 1
    return [
        replace(
            c,
            estimate=estimate(
                c.box,
                c.in_use,
                ask,
                fleet,
                usage,
                signals.learned,
                signals.waiting,
                waiting / full if c.tier is Tier.SATURATED else 0.0,
                signals.now,
            ),
        )
        for c in candidates
    ]


def honest(candidates: list[Candidate]) -> list[Candidate]:
    """The tier rules: a free slot where the model is not loaded counts as saturated when
    the load would evict a model in use while another box could serve, or (once answers
    have been seen) when the load, with the reload of an idle model it would evict, outlasts
    the wait for a box that has the model loaded."""
    # Boxes that have the model in memory or are loading it: how soon each could start.
    holders = [c for c in candidates if c.estimate is not None and (c.loaded or c.in_use)]
    out = []
    for c in candidates:
        e = c.estimate
        if c.tier is Tier.FREE and e is not None:
            others = [d for d in candidates if d is not c and not _evicts_busy(d)]
            soonest = min((d for d in holders if d is not c), key=_ready, default=None)
            if e.evicts_busy and others:
                c = replace(c, tier=Tier.SATURATED, note=f"a load would evict {e.evicts} (busy)")
            elif e.known and soonest is not None and _ready(soonest) < e.load + e.penalty:
                note = (
                    f"its load ({e.load:.2f} s"
                    + (f", {e.penalty:.2f} s to reload {e.evicts} later" if e.penalty else "")
                    + f") outlasts the wait on {soonest.box.name} ({_ready(soonest):.2f} s)"
                )
                c = replace(c, tier=Tier.SATURATED, note=note)
        out.append(c)
    return out


def _evicts_busy(c: Candidate) -> bool:
    return c.estimate is not None and c.estimate.evicts_busy


def _ready(c: Candidate) -> float:
    """Seconds until the box could start on the request: its wait, and the rest of a load
    under way."""
    return c.estimate.wait + c.estimate.load if c.estimate is not None else 0.0


def _busy_by_box(usage: Usage) -> dict[str, tuple[int, int]]:
    """Per box: (models with requests in flight, requests in flight)."""
    busy: dict[str, tuple[int, int]] = {}
    for (box, _model), n in usage.items():
        models, requests = busy.get(box, (0, 0))
        busy[box] = (models + 1, requests + n)
    return busy
