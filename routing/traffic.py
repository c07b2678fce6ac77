"""What traffic has shown, kept between decisions: fair share per user, each box's rate
budget and cooldown, learned costs (``routing.costs``), and the
round-robin position. ``signals()`` hands
``rank()`` an immutable view of it for one decision."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from ollamux.routing.accounting import Counts
from ollamux.routing.clock import Clock, Timer
from ollamux.routing.costs import Costs
from ollamux.routing.fairness import FairShare
from ollamux.routing.limits import BoxLimits
from ollamux.routing.policies import Signals
from ollamux.routing.settings import Settings
from ollamux.routing.state import Fleet
from ollamux.routing.waiting import Ticket


class Traffic:
    def __init__(self, settings: Settings, clock: Clock, on_free: Callable[[], None]) -> None:
        fair = settings.fairness
        self.fair = FairShare(fair.window, fair.input_weight, fair.output_weight)
        self.limits = {
            ep.name: BoxLimits(ep.name, ep.rpm_limit, ep.tpm_limit) for ep in settings.endpoints
        }
        self.costs = Costs()
        self.turn = 0
        self._limited = [b for b in self.limits.values() if b.limited]
        self._cooling: set[str] = set()
        self._clock = clock
        self._on_free = on_free
        self._timers: dict[str, tuple[float, Timer]] = {}  # box -> (when, timer)

    def reconfigure(self, settings: Settings) -> None:
        """A config reload: budgets for new or changed limits; counts kept where same."""
        fair = settings.fairness
        self.fair.retune(fair.window, fair.input_weight, fair.output_weight)
        limits = {}
        for ep in settings.endpoints:
            old = self.limits.get(ep.name)
            same = old is not None and (old.rpm, old.tpm) == (ep.rpm_limit, ep.tpm_limit)
            limits[ep.name] = (
                old if same and old else BoxLimits(ep.name, ep.rpm_limit, ep.tpm_limit)
            )
        self.limits = limits
        self._limited = [b for b in limits.values() if b.limited]
        self._cooling &= limits.keys()

    def signals(
        self, now: float, fleet: Fleet | None = None, waiting: dict[str, int] | None = None
    ) -> Signals:
        utilisation = {b.name: b.utilisation(now) for b in self._limited}
        cooling = frozenset(n for n in self._cooling if self.limits[n].cooling_until > now)
        self._cooling &= cooling
        if fleet is not None:
            self.costs.see(fleet)
        return Signals(
            MappingProxyType(utilisation),
            cooling,
            self.turn,
            self.costs.view,
            MappingProxyType(waiting or {}),
            now,
        )

    def placed(self, box: str, ticket: Ticket, now: float, model: str | None = None) -> None:
        self.turn += 1
        if model is not None:
            self.costs.placed(box, model, now)
        self.fair.placed(ticket.user, ticket.cost, now)
        limits = self.limits.get(box)
        if limits is not None and limits.limited:
            limits.sent(now)
            if limits.utilisation(now) >= 1.0:
                self._wake_at(box, limits.frees_at(now))

    def finished(
        self,
        box: str,
        model: str,
        user: str,
        ttft: float | None,
        counts: Counts,
        now: float,
        sharing: int = 1,
    ) -> None:
        """``sharing``: requests of the model the box ran once this one was placed."""
        self.fair.finished(user, counts.output_tokens, now)
        self.costs.finished(box, model, ttft, counts, now, sharing)
        limits = self.limits.get(box)
        if limits is not None and limits.limited:
            limits.tokens(counts.prompt_tokens + counts.output_tokens, now)
            if limits.utilisation(now) >= 1.0:
                self._wake_at(box, limits.frees_at(now))

    def refused(self, box: str, seconds: float, now: float) -> None:
        """The box answered 429: rest it, and look at the waiting room when it may work."""
        limits = self.limits.get(box)
        if limits is None:
            return
        limits.cool(now + seconds)
        self._cooling.add(box)
        self._wake_at(box, limits.cooling_until)

    def rearm(self, now: float) -> None:
        """Requests still wait: look again when a full or resting box may take them."""
        for box in self._limited:
            if box.utilisation(now) >= 1.0:
                self._wake_at(box.name, box.frees_at(now))
        for name in self._cooling:
            self._wake_at(name, self.limits[name].cooling_until)

    def _wake_at(self, box: str, when: float | None) -> None:
        """Drain the waiting room when this box's budget frees (one timer per box)."""
        if when is None:
            return
        when += 0.001
        old = self._timers.get(box)
        if old is not None:
            if self._clock.now() < old[0] <= when:
                return  # an earlier wake-up is already armed
            old[1].cancel()
        self._timers[box] = (when, self._clock.call_at(when, self._on_free))

    def close(self) -> None:
        for _when, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
