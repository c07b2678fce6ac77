"""Routing strategies: how candidates that can serve a request are ordered.

Each strategy is a pure key function over one candidate and the decision's context;
``rank()`` sorts by it. Every strategy honours the same ground rules, which ``rank()``
enforces before any key is computed: only healthy boxes that have the model, outside a
cooldown and under their rate limits; and boxes with a free slot before saturated ones
(the first element of every key), so the waiting room works the same under all of them.

- ``default``: the card's order (loaded + free, free, least saturated), refined by health,
  conversation affinity, an in-progress load, priority, load cost, rate-limit use, load
  and observed speed;
- ``least-busy``: the lowest share of slots in use;
- ``round-robin``: the next box in config order after the last one chosen;
- ``weighted-random``: at random, in proportion to each box's ``weight``;
- ``latency``: the shortest expected answer time from observed speed;
- ``usage``: the lowest rate-limit utilisation (used / limit), then load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ollamux.routing.state import Health

if TYPE_CHECKING:
    from ollamux.routing.choose import Candidate, Request

Key = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Signals:
    """What traffic has shown, as of one decision: read-only inputs to ``rank()``."""

    utilisation: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    cooling: frozenset[str] = frozenset()  # boxes resting after a 429
    speed: Mapping[tuple[str, str], float] = field(default_factory=lambda: MappingProxyType({}))
    turn: int = 0  # placements so far: round-robin's position

    def expected(self, box: str, model: str) -> float:
        """Expected seconds for a typical answer; a box with no data yet counts as the
        average of the boxes that have some (for this model, else for any)."""
        own = self.speed.get((box, model))
        if own is not None:
            return own
        same = [v for (_, m), v in self.speed.items() if m == model]
        pool = same or list(self.speed.values())
        return sum(pool) / len(pool) if pool else 0.0


NO_SIGNALS = Signals()


@dataclass(frozen=True, slots=True)
class Context:
    """Per-decision facts a key may need besides the candidate itself."""

    req: Request
    signals: Signals
    lightest: Mapping[int, float]  # per tier: the lowest load among its candidates
    busy: Mapping[str, tuple[int, int]]  # per box: (models in flight, requests in flight)
    boxes: int  # boxes in the fleet (round-robin's modulus)


Policy = Callable[["Candidate", Context, float], Key]


def _health(c: Candidate) -> int:
    return 0 if c.box.health is Health.HEALTHY else 1


def _free(c: Candidate) -> int:
    return 1 if c.in_use >= c.box.slots else 0


def default(c: Candidate, ctx: Context, tie: float) -> Key:
    req, box = ctx.req, c.box
    order = (box.priority, box.index) if req.priority_routing else (0, 0)
    sticky = (
        0 if box.name == req.affinity and c.load - ctx.lightest[c.tier] <= req.load_guard else 1
    )
    util = ctx.signals.utilisation.get(box.name, 0.0)
    speed = ctx.signals.expected(box.name, req.model)
    if c.tier == 2:  # saturated: a shorter queue beats priority and affinity
        return (c.tier, c.load, _health(c), *order, sticky, util, speed, tie)
    if c.tier == 1:  # free but not loaded: where loading costs least
        loading_here = 0 if c.in_use > 0 else 1
        models_busy, in_flight = ctx.busy.get(box.name, (0, 0))
        return (
            c.tier,
            _health(c),
            sticky,
            loading_here,
            *order,
            models_busy,
            in_flight,
            util,
            c.load,
            speed,
            tie,
        )
    return (c.tier, _health(c), sticky, *order, util, c.load, speed, tie)


def least_busy(c: Candidate, ctx: Context, tie: float) -> Key:
    return (_free(c), c.load, _health(c), tie)


def round_robin(c: Candidate, ctx: Context, tie: float) -> Key:
    return (_free(c), (c.box.index - ctx.signals.turn) % max(1, ctx.boxes), tie)


def weighted_random(c: Candidate, ctx: Context, tie: float) -> Key:
    # Efraimidis-Spirakis: the largest u ** (1 / weight) wins with probability weight / sum.
    return (_free(c), -(tie ** (1.0 / c.weight)))


def latency(c: Candidate, ctx: Context, tie: float) -> Key:
    return (_free(c), ctx.signals.expected(c.box.name, ctx.req.model), c.load, tie)


def usage(c: Candidate, ctx: Context, tie: float) -> Key:
    return (_free(c), ctx.signals.utilisation.get(c.box.name, 0.0), c.load, tie)


POLICIES: Mapping[str, Policy] = MappingProxyType(
    {
        "default": default,
        "least-busy": least_busy,
        "round-robin": round_robin,
        "weighted-random": weighted_random,
        "latency": latency,
        "usage": usage,
    }
)
