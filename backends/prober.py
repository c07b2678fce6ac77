"""Keeps each box's state fresh in the background, whatever the request rate.

One loop per box: loaded models every ``probe.ps`` seconds, advertised models every
``probe.tags`` seconds. Results are keyed by box name and published as a new immutable
``Fleet``; the last good lists are kept while a box fails (stale-while-revalidate).

Health: both probes answer → healthy; the box answers but a probe fails → degraded;
unreachable → degraded, and down after ``DOWN_AFTER`` failures in a row (at once if it
was never reached). A failing box is probed with exponential backoff. Traffic that finds
a box unreachable pokes its loop so health catches up within one probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ollamux.backends.kinds import Adapter
from ollamux.backends.upstream import Upstream
from ollamux.routing.breaker import Breaker, BreakerState
from ollamux.routing.clock import Clock, LoopClock, Timer
from ollamux.routing.errors import UpstreamBadAnswer, UpstreamError
from ollamux.routing.settings import Endpoint, Kind, Settings
from ollamux.routing.state import BoxState, Fleet, Health, canonical_model

log = logging.getLogger("ollamux.prober")

DOWN_AFTER = 3
MODELS_REFRESH_MIN_GAP = 1.0  # seconds between two unknown-model refreshes
_NEVER = float("inf")
_REARM_GAP = 0.01  # s: a breaker timer that fired early tries again this much later


class _Box:
    """The prober's private bookkeeping for one box."""

    def __init__(self, ep: Endpoint, adapter: Adapter, breaker: Breaker) -> None:
        self.ep = ep
        self.adapter = adapter
        self.breaker = breaker
        self.failures = 0
        self.models_at = -float("inf")
        # Probes are numbered as they start; of two that overlap, the older one's reading
        # must not replace the newer one's (loaded models and model lists apart).
        self.probes = 0
        self.newest_loaded = -1
        self.newest_models = -1
        self.wake = asyncio.Event()


class Prober:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        adapters: Mapping[Kind, Adapter],
        on_change: Callable[[], None] = lambda: None,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or LoopClock()
        self._settings = settings
        self._up = upstream
        self._adapters = adapters
        self._on_change = on_change
        self._boxes = {ep.name: self._new_box(ep) for ep in settings.endpoints}
        self._fleet = Fleet.of(
            tuple(_fresh_state(settings, ep, i) for i, ep in enumerate(settings.endpoints))
        )
        self._breakers_due = _NEVER  # the earliest time an open breaker may half-open
        # (box, model) breakers: a model that fails on one box (its error names it) rests
        # there, while the box serves its other models.
        self._model_breakers: dict[tuple[str, str], Breaker] = {}
        self._timer: Timer | None = None
        self._timer_at = _NEVER
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed_at = -float("inf")

    async def start(self) -> None:
        """Probe every box once (so the first requests route), then keep probing."""
        await asyncio.gather(*(self.tick(name, models=True) for name in self._boxes))
        self._loops = {name: asyncio.create_task(self._loop(name)) for name in self._boxes}

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, _NEVER
        for task in self._loops.values():
            task.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)
        self._loops = {}

    def _new_box(self, ep: Endpoint) -> _Box:
        fo = self._settings.failover
        breaker = Breaker(fo.breaker_failures, fo.breaker_backoff, fo.breaker_max_backoff)
        return _Box(ep, self._adapters[ep.kind], breaker)

    def set_draining(self, name: str, draining: bool) -> None:
        """A draining box takes no new requests; those in flight finish."""
        state = self.fleet.by_name[name]
        if state.draining != draining:
            log.info("box %s %s", name, "draining" if draining else "resumed")
            self._publish(replace(state, draining=draining))

    def reconfigure(self, settings: Settings, adapters: Mapping[Kind, Adapter]) -> list[str]:
        """Take a new config: boxes added start probing, changed ones are updated (and
        re-probed when their URL or kind changed), removed ones drain. Returns the names
        of the removed boxes, for the caller to ``remove`` once their requests are done."""
        self._settings, self._adapters = settings, adapters
        states = []
        for i, ep in enumerate(settings.endpoints):
            box, old = self._boxes.get(ep.name), self.fleet.by_name.get(ep.name)
            if box is None or old is None:
                self._boxes[ep.name] = self._new_box(ep)
                states.append(_fresh_state(settings, ep, i))
                if self._loops:
                    self._loops[ep.name] = asyncio.create_task(self._loop(ep.name))
                    self._boxes[ep.name].wake.set()
                continue
            moved = (box.ep.url, box.ep.kind) != (ep.url, ep.kind)
            box.ep, box.adapter = ep, self._adapters[ep.kind]
            _retune(box.breaker, settings)
            state = _fresh_state(settings, ep, i) if moved else old
            states.append(
                replace(
                    state,
                    index=i,
                    priority=ep.priority,
                    weight=ep.weight,
                    slots=ep.max_concurrent or (old.slots if not moved else settings.slots(ep)),
                    draining=False,
                )
            )
            if moved:
                box.wake.set()
        names = {ep.name for ep in settings.endpoints}
        removed = [b.name for b in self.fleet.boxes if b.name not in names]
        states += [replace(self.fleet.by_name[n], draining=True) for n in removed]
        for breaker in self._model_breakers.values():
            _retune(breaker, settings)
        self.fleet = Fleet.of(tuple(states))
        self._breakers_due = min(self._breakers_due, self._clock.now())  # re-check them
        self._on_change()
        return removed

    def remove(self, name: str) -> None:
        """Forget a box (removed from the config and drained)."""
        task = self._loops.pop(name, None)
        if task is not None:
            task.cancel()
        self._boxes.pop(name, None)
        for key in [k for k in self._model_breakers if k[0] == name]:
            del self._model_breakers[key]
        self.fleet = Fleet.of(tuple(b for b in self.fleet.boxes if b.name != name))
        self._on_change()

    def report(self, name: str, ok: bool) -> None:
        """What traffic saw of a box: feeds its circuit breaker."""
        box = self._boxes.get(name)
        if box is None:
            return
        now = self._clock.now()
        changed = box.breaker.success() if ok else box.breaker.failure(now)
        if not changed:
            return
        state = box.breaker.state
        log.log(logging.INFO if ok else logging.WARNING, "box %s: breaker %s", name, state)
        self._publish(replace(self._fleet.by_name[name], breaker=state))
        wait = box.breaker.reopens_in(now)
        if wait is not None:
            self._breakers_due = min(self._breakers_due, now + wait)
            self._arm(now + wait)

    def report_model(self, name: str, model: str, ok: bool) -> None:
        """What traffic saw of one model on a box: feeds that (box, model)'s breaker."""
        if ok:
            breaker = self._model_breakers.pop((name, model), None)
            if breaker is not None and breaker.state is not BreakerState.CLOSED:
                log.info("box %s: model %s serves again", name, model)
                self._set_failing(name, model, False)
            return
        if name not in self._boxes:
            return
        fo = self._settings.failover
        breaker = self._model_breakers.setdefault(
            (name, model), Breaker(fo.breaker_failures, fo.breaker_backoff, fo.breaker_max_backoff)
        )
        now = self._clock.now()
        if breaker.failure(now) and breaker.state is BreakerState.OPEN:
            log.warning("box %s: model %s failing there, breaker open", name, model)
            self._set_failing(name, model, True)
            wait = breaker.reopens_in(now) or 0.0
            self._breakers_due = min(self._breakers_due, now + wait)
            self._arm(now + wait)

    def _set_failing(self, name: str, model: str, failing: bool) -> None:
        state = self._fleet.by_name.get(name)
        if state is None:
            return
        models = state.failing | {model} if failing else state.failing - {model}
        if models != state.failing:
            self._publish(replace(state, failing=models))

    @property
    def fleet(self) -> Fleet:
        """The boxes' current state. An open breaker whose backoff has passed turns
        half-open here, on whichever read comes first (a routing decision, a probe, the
        status board) — its timer only makes that prompt: a timer that fires early or
        not at all cannot leave it open."""
        if self._breakers_due != _NEVER and self._clock.now() >= self._breakers_due:
            self._recheck_breakers()
        return self._fleet

    @fleet.setter
    def fleet(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def _recheck_breakers(self) -> None:
        now = self._clock.now()
        due, opened = _NEVER, []
        for name, box in self._boxes.items():
            if box.breaker.tick(now):
                opened.append(name)
            wait = box.breaker.reopens_in(now)
            if wait is not None:
                due = min(due, now + wait)
        trials = []
        for (name, model), breaker in self._model_breakers.items():
            if breaker.tick(now):
                trials.append((name, model))
            wait = breaker.reopens_in(now)
            if wait is not None:
                due = min(due, now + wait)
        self._breakers_due = due  # before publishing: its listeners read ``fleet``
        for name, model in trials:
            self._set_failing(name, model, False)  # the next request is the trial
        for name in opened:
            if name in self._fleet.by_name:
                log.info("box %s: breaker %s", name, BreakerState.HALF_OPEN)
                self._publish(
                    replace(self._fleet.by_name[name], breaker=self._boxes[name].breaker.state)
                )
        if due != _NEVER:
            # Never at once: a timer that fired early must not spin until the deadline.
            self._arm(max(due, now + _REARM_GAP))

    def _arm(self, when: float) -> None:
        """A timer for the earliest breaker deadline (one at a time)."""
        if self._timer_at <= when:
            return  # an earlier timer will re-check, and re-arm for this one
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._clock.call_at(when, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer, self._timer_at = None, _NEVER
        self._recheck_breakers()  # re-arms if it fired before the deadline

    def _publish(self, state: BoxState) -> None:
        self.fleet = self.fleet.replace(state)
        self._on_change()

    def lacks(self, name: str, path: str) -> None:
        """Traffic found that ``name`` does not serve ``path`` (a 404 whose translation
        worked): not a failure; requests for that route are translated for it."""
        state = self.fleet.by_name.get(name)
        if state is not None and path not in state.lacking:
            log.info("box %s does not serve %s: translating for it", name, path)
            self._publish(replace(state, lacking=state.lacking | {path}))

    def poke(self, name: str) -> None:
        """Probe this box now (traffic found it failing)."""
        if name in self._boxes:
            self._boxes[name].wake.set()

    async def refresh_models(self) -> None:
        """Re-read every box's model list once, shared by all callers; rate-limited."""
        if self._refresh is None:
            if time.monotonic() - self._refreshed_at < MODELS_REFRESH_MIN_GAP:
                return
            self._refresh = asyncio.create_task(self._refresh_all())
        await asyncio.shield(self._refresh)

    async def refresh_all(self) -> None:
        """Probe every box now, model lists included (the admin API's refresh)."""
        await asyncio.gather(*(self.tick(name, models=True) for name in list(self._boxes)))

    async def _refresh_all(self) -> None:
        try:
            await self.refresh_all()
        finally:
            self._refreshed_at = time.monotonic()
            self._refresh = None

    async def _loop(self, name: str) -> None:
        box = self._boxes[name]
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(box.wake.wait(), self._delay(box))
            box.wake.clear()
            due = time.monotonic() - box.models_at >= self._settings.probe.tags
            await self.tick(name, models=due)

    def _delay(self, box: _Box) -> float:
        probe = self._settings.probe
        if box.failures == 0:
            return probe.ps
        return float(min(probe.max_backoff, probe.ps * 2**box.failures))

    async def tick(self, name: str, *, models: bool) -> None:
        """One probe of one box; publishes the new state if anything changed."""
        box = self._boxes.get(name)
        if box is None:
            return
        ep, old = box.ep, self.fleet.by_name[name]
        number, box.probes = box.probes, box.probes + 1
        probed = await self._probe(box, old, models)
        current = self.fleet.by_name.get(name)
        if current is None or self._boxes.get(name) is not box or box.ep is not ep:
            return  # removed or reconfigured meanwhile: this answer is about the past
        # Only what the probe measured is taken: traffic (breaker) and the config (order,
        # draining) may have moved while it ran, and theirs is the newer word. A probe that
        # did not read the model list must not publish the one it started from, and an
        # older probe's reading never replaces a newer one's.
        fields: dict[str, Any] = {}
        if number > box.newest_loaded:
            box.newest_loaded = number
            fields.update(
                health=probed.health,
                error=probed.error,
                loaded=probed.loaded,
                running=probed.running,
            )
        if probed.tags is not old.tags and number > box.newest_models:  # the list was read
            box.newest_models = number
            fields.update(
                models=probed.models,
                tags=probed.tags,
                remote=probed.remote,
                version=probed.version,
                slots=probed.slots,
                openai_api=probed.openai_api,
            )
            if probed.version != current.version:
                fields["lacking"] = frozenset()  # upgraded: what it lacked, it may serve now
        if probed.answered and not current.answered:
            fields["answered"] = True
        new = replace(current, **fields)
        back = current.health is Health.DOWN and new.health is Health.HEALTHY
        if back and box.breaker.recovered():
            new = replace(new, breaker=box.breaker.state)
        if new != current:
            _log_change(name, current, new)
            self._publish(new)

    async def _probe(self, box: _Box, old: BoxState, models: bool) -> BoxState:
        timeout = self._settings.probe.timeout
        state, errors, reached = old, [], False
        if models or not old.models:
            try:
                listed = await box.adapter.list_models(self._up, box.ep, timeout)
            except UpstreamError as exc:
                errors.append(exc)
            else:
                reached = True
                box.models_at = time.monotonic()
                state = replace(
                    state,
                    models=listed.names,
                    tags=listed.raw,
                    remote=frozenset(
                        canonical_model(t["name"]) for t in listed.raw if t.get("remote_host")
                    ),
                    version=listed.version or state.version,
                    openai_api=listed.openai_api,
                    slots=box.ep.max_concurrent or listed.slots or state.slots,
                )
        try:
            loaded = await box.adapter.list_loaded(self._up, box.ep, timeout)
        except UpstreamError as exc:
            errors.append(exc)
        else:
            reached = True
            state = replace(state, loaded=loaded.names, running=loaded.raw)
        # A box answers "as a box of its kind" when a probe succeeds, or when it says it
        # cannot serve now (5xx: busy, loading). A 4xx or an answer without a model list
        # means no box of that kind at this URL (a wrong path or port, a wrong key).
        reached = reached or any(_busy(e) for e in errors)
        if not errors:
            box.failures = 0
            return replace(state, health=Health.HEALTHY, error=None, answered=True)
        error = errors[0].message
        if reached:
            box.failures = 0
            return replace(state, health=Health.DEGRADED, error=error, answered=True)
        if isinstance(errors[0], UpstreamBadAnswer):
            error = f"{error}: no {box.ep.kind} box answers at {box.ep.url}; check its url"
        box.failures += 1
        never_up = old.health in (Health.UNKNOWN, Health.DOWN)
        down = never_up or box.failures >= DOWN_AFTER
        return replace(state, health=Health.DOWN if down else Health.DEGRADED, error=error)


def _busy(error: UpstreamError) -> bool:
    """The box answered as its kind but cannot serve now (5xx, 429)."""
    status = error.answered if isinstance(error, UpstreamBadAnswer) else None
    return status is not None and (status >= 500 or status == 429)


def _log_change(name: str, old: BoxState, new: BoxState) -> None:
    """Once per change, never per probe: down is a warning, back up is news, and a probe
    failing on a box that still answers is worth a line at INFO."""
    if new.health == old.health:
        return
    reason = f": {new.error}" if new.error else ""
    if new.health is Health.DOWN:
        log.warning("box %s is down%s", name, reason)
    elif old.health in (Health.DOWN, Health.UNKNOWN):
        log.info("box %s is up (%s)%s", name, new.health, reason)
    else:
        log.info("box %s is %s%s", name, new.health, reason)


def _retune(breaker: Breaker, settings: Settings) -> None:
    """A reload's breaker settings, for a box that keeps its breaker (and its state): an
    open one waits no longer than the new maximum."""
    fo = settings.failover
    breaker.failures_to_open = fo.breaker_failures
    breaker.backoff, breaker.max_backoff = fo.breaker_backoff, fo.breaker_max_backoff
    breaker.wait = min(breaker.wait, fo.breaker_max_backoff)


def _fresh_state(settings: Settings, ep: Endpoint, index: int) -> BoxState:
    return BoxState(
        name=ep.name,
        url=ep.url,
        kind=ep.kind,
        index=index,
        priority=ep.priority,
        slots=settings.slots(ep),
        weight=ep.weight,
    )
