"""Routing strategies: how candidates that can serve a request are ordered.

Each strategy is a pure key function over one candidate and the decision's context;
``rank()`` sorts by it. Every strategy honours the same ground rules, which ``rank()``
enforces before any key is computed: only healthy boxes that have the model, outside a
cooldown and under their rate limits; and, under every strategy but ``fastest``, boxes
with a free slot before saturated ones (the first element of the key), so the waiting
room works the same under all of them.

- ``default``: the card's order (loaded + free, free, least saturated), refined by health,
  conversation affinity, an in-progress load, priority, load cost, rate-limit use, load
  and learned service time;
- ``least-busy``: the lowest share of slots in use;
- ``round-robin``: the next box in config order after the last one chosen;
- ``weighted-random``: at random, in proportion to each box's ``weight``;
- ``latency``: the shortest learned service time (``Signals.expected``);
- ``usage``: the lowest rate-limit utilisation (used / limit), then load;
- ``fastest``: the soonest estimated finish (``routing.estimate``), whatever the tier:
  a busy box that holds the model and the conversation's prefix beats a cold load
  when its wait is shorter, and then the request waits for it.

Under ``default`` and ``fastest`` the candidates carry their estimate; ``default`` orders
by it within a tier, keeps a conversation on its box while the wait there is shorter
than the prefill its cache saves, and sends a request whose prefix is cached nowhere
where a slot's cache is spare rather than where it would push out a live
conversation's (each slot caches one conversation's prefix).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ollamux.routing.costs import NOTHING_LEARNED, Learned
from ollamux.routing.state import Health

if TYPE_CHECKING:
    from ollamux.routing.choose import Candidate, Request

Key = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Signals:
    """What traffic has shown, as of one decision: read-only inputs to ``rank()``."""

    utilisation: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    cooling: frozenset[str] = frozenset()  # boxes resting after a 429
    turn: int = 0  # placements so far: round-robin's position
    learned: Learned = NOTHING_LEARNED  # costs per (box, model), for the estimate
    waiting: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    now: float = 0.0  # the decision's time, on the dispatcher's clock

    def expected(self, box: str, model: str) -> float:
        """Seconds an answer of this model has lately taken on this box once sent (the
        learned service time); a box with no data yet counts as the average of the
        boxes that have some (for this model, else for any); 0 before any answer."""
        return self.learned.figure(self.learned.service, box, model) or 0.0


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


def _score(c: Candidate) -> float:
    """The estimate, to the tenth of a second (finer differences are noise), once the
    model's costs are known; before that every box scores alike and the card decides."""
    e = c.estimate
    return round(e.score, 1) if e is not None and e.known else 0.0


def _sticky(c: Candidate, ctx: Context) -> int:
    """The conversation's box, while it is worth it: by the estimate, while its wait is
    shorter than the prefill its cache saves; before there is one, while its load is
    within ``load_guard`` of the lightest box's in its tier."""
    req = ctx.req
    if c.box.name != req.affinity:
        return 1
    e = c.estimate
    if e is not None and e.known and c.tier != 2:
        return 0 if e.wait <= e.saved else 1
    return 0 if c.load - ctx.lightest[c.tier] <= req.load_guard else 1


def _crowded(c: Candidate, ctx: Context) -> int:
    """A request whose prefix is not cached on this box would push a live conversation's
    cache out of its slot (every slot there holds one)."""
    return 1 if c.estimate is not None and c.estimate.displaced > 0 else 0


def default(c: Candidate, ctx: Context, tie: float) -> Key:
    req, box = ctx.req, c.box
    order = (box.priority, box.index) if req.priority_routing else (0, 0)
    sticky = _sticky(c, ctx)
    util = ctx.signals.utilisation.get(box.name, 0.0)
    speed = ctx.signals.expected(box.name, req.model)
    score = _score(c)
    if c.tier == 2:  # saturated: a shorter (estimated) wait beats priority and affinity
        honest_free = 1 if c.in_use < box.slots else 0  # a free slot that is not free
        return (c.tier, score, honest_free, c.load, _health(c), *order, sticky, util, speed, tie)
    if c.tier == 1:  # free but not loaded: where loading costs least
        loading_here = 0 if c.in_use > 0 else 1
        models_busy, in_flight = ctx.busy.get(box.name, (0, 0))
        return (
            c.tier,
            _health(c),
            sticky,
            loading_here,
            *order,
            score,
            _crowded(c, ctx),
            models_busy,
            in_flight,
            util,
            c.load,
            speed,
            tie,
        )
    return (c.tier, _health(c), sticky, *order, score, _crowded(c, ctx), util, c.load, speed, tie)


def least_busy(c: Candidate, ctx: Context, tie: float) -> Key:
    return (_free(c), c.load, _health(c), tie)


def round_robin(c: Candidate, ctx: Context, tie: float) -> Key:
    return (_free(c), (c.box.index - ctx.signals.turn) % max(1, ctx.boxes), tie)


def weighted_random(c: Candidate, ctx: Context, tie: float) -> Key:
    # Efraimidis-Spirakis: the largest u ** (1 / weight) wins with probability weight / sum.
    return (_free(c), -(tie ** (1.0 / c.weight)))


def latency(c: Candidate, ctx: Context, tie: float) -> Key:
    return (_free(c), ctx.signals.expected(c.box.name, ctx.req.model), c.load, tie)


def fastest(c: Candidate, ctx: Context, tie: float) -> Key:
    e = c.estimate
    finish = round(e.score, 2) if e is not None else ctx.signals.expected(c.box.name, ctx.req.model)
    return (finish, _crowded(c, ctx), _health(c), c.load, tie)


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
        "fastest": fastest,
    }
)
