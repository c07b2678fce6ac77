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

from backends.adapters import Adapter
from backends.breaker import Breaker
from backends.errors import UpstreamBadAnswer, UpstreamError
from backends.settings import Endpoint, Kind, Settings
from backends.state import BoxState, Fleet, Health
from backends.upstream import Upstream

log = logging.getLogger("ollamux.prober")

DOWN_AFTER = 3
MODELS_REFRESH_MIN_GAP = 1.0  # seconds between two unknown-model refreshes


class _Box:
    """The prober's private bookkeeping for one box."""

    def __init__(self, ep: Endpoint, adapter: Adapter, breaker: Breaker) -> None:
        self.ep = ep
        self.adapter = adapter
        self.breaker = breaker
        self.failures = 0
        self.models_at = -float("inf")
        self.wake = asyncio.Event()


class Prober:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        adapters: Mapping[Kind, Adapter],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._up = upstream
        self._on_change = on_change
        fo = settings.failover
        self._boxes = {
            ep.name: _Box(
                ep,
                adapters[ep.kind],
                Breaker(fo.breaker_failures, fo.breaker_backoff, fo.breaker_max_backoff),
            )
            for ep in settings.endpoints
        }
        self.fleet = Fleet.of(
            tuple(
                BoxState(
                    name=ep.name,
                    url=ep.url,
                    kind=ep.kind,
                    index=i,
                    priority=ep.priority,
                    slots=settings.slots(ep),
                )
                for i, ep in enumerate(settings.endpoints)
            )
        )
        self._loops: list[asyncio.Task[None]] = []
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed_at = -float("inf")

    async def start(self) -> None:
        """Probe every box once (so the first requests route), then keep probing."""
        await asyncio.gather(*(self.tick(name, models=True) for name in self._boxes))
        self._loops = [asyncio.create_task(self._loop(name)) for name in self._boxes]

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

    def report(self, name: str, ok: bool) -> None:
        """What traffic saw of a box: feeds its circuit breaker."""
        box = self._boxes.get(name)
        if box is None:
            return
        now = time.monotonic()
        changed = box.breaker.success() if ok else box.breaker.failure(now)
        if not changed:
            return
        state = box.breaker.state
        log.log(logging.INFO if ok else logging.WARNING, "box %s: breaker %s", name, state)
        self._publish(replace(self.fleet.by_name[name], breaker=state))
        wait = box.breaker.reopens_in(now)
        if wait is not None:
            asyncio.get_running_loop().call_later(wait, self._half_open, name)

    def _half_open(self, name: str) -> None:
        box = self._boxes[name]
        if box.breaker.tick(time.monotonic()):
            self._publish(replace(self.fleet.by_name[name], breaker=box.breaker.state))

    def _publish(self, state: BoxState) -> None:
        self.fleet = self.fleet.replace(state)
        self._on_change()

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

    async def _refresh_all(self) -> None:
        try:
            await asyncio.gather(*(self.tick(name, models=True) for name in self._boxes))
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
        box = self._boxes[name]
        old = self.fleet.by_name[name]
        new = await self._probe(box, old, models)
        # Traffic may have moved the breaker while the probe ran; it is the newer word.
        new = replace(new, breaker=self.fleet.by_name[name].breaker)
        if new != self.fleet.by_name[name]:
            if new.health != old.health:
                log.info("box %s is %s%s", name, new.health, f": {new.error}" if new.error else "")
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
        reached = reached or any(isinstance(e, UpstreamBadAnswer) for e in errors)
        if not errors:
            box.failures = 0
            return replace(state, health=Health.HEALTHY, error=None)
        error = errors[0].message
        if reached:
            box.failures = 0
            return replace(state, health=Health.DEGRADED, error=error)
        box.failures += 1
        never_up = old.health in (Health.UNKNOWN, Health.DOWN)
        down = never_up or box.failures >= DOWN_AFTER
        return replace(state, health=Health.DOWN if down else Health.DEGRADED, error=error)
