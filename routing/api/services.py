"""The running parts of one app, built from settings and opened in its lifespan.

Nothing here is module-level: ``create_app(settings)`` builds its own ``Services``, so two
apps can run side by side in one process (tests do).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ollamux.backends.kinds import adapters
from ollamux.backends.prober import Prober
from ollamux.backends.relay import Exchange, Outbound, Outcome, Target
from ollamux.backends.shared_state import RedisSlots
from ollamux.backends.upstream import Upstream
from ollamux.routing.choose import Request
from ollamux.routing.clock import Clock, LoopClock
from ollamux.routing.dispatch import Dispatcher
from ollamux.routing.errors import BadRequest, ProxyError
from ollamux.routing.fairness import estimate_tokens, user_of
from ollamux.routing.ledger import Lease, Ledger
from ollamux.routing.limits import retry_after as retry_after_seconds
from ollamux.routing.observe.events import Feed
from ollamux.routing.observe.metrics import Metrics
from ollamux.routing.observe.stats import Stats
from ollamux.routing.observe.status import Snapshot, StatusBoard
from ollamux.routing.settings import Settings
from ollamux.routing.shared_dispatch import SharedDispatcher
from ollamux.routing.state import BoxState, Usage, model_key, pattern_alias, split_aliases
from ollamux.routing.waiting import PRIORITIES, Ticket

# How to send one client request to a given box (its path and body; translation if its
# kind speaks another API). Called again for each box tried.
Plan = Callable[[BoxState], Outbound]


class Services:
    def __init__(
        self, settings: Settings, rng: random.Random | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or LoopClock()
        self.endpoints = {ep.name: ep for ep in settings.endpoints}
        self._retiring: set[str] = set()  # removed from the config, draining
        self.aliases, self.patterns = split_aliases(settings.aliases)
        self.upstream = Upstream(settings.timeouts, settings.limits)
        self.metrics = Metrics(self.snapshot)
        self.stats = Stats(settings.stats, self.metrics, self.snapshot)
        self.ledger = Ledger(on_change=self._usage_changed)
        self.prober = Prober(
            settings, self.upstream, adapters(self.aliases), on_change=self._fleet_changed
        )
        self.shared: RedisSlots | None = None
        self.dispatcher: Dispatcher
        shared = settings.shared_state
        if shared.redis is None:
            self.dispatcher = Dispatcher(
                settings,
                self.ledger,
                self.prober,
                rng or random.Random(),
                self.clock,
                on_change=self._waiting_changed,
            )
        else:
            # Several replicas, one fleet: slots, waiting tickets and the replica registry
            # live in Redis (backends/shared_state); the core reaches them through
            # SharedSlots only.
            self.shared = RedisSlots(
                shared.redis,
                shared.replica or f"{socket.gethostname()}-{os.getpid()}",
                ttl=shared.lease_ttl,
                prefix=shared.prefix,
                timeout=shared.timeout,
                on_change=self._usage_changed,
                on_freed=self._slot_freed,
                on_event=self._heard,
            )
            self.shared.recall_limit = settings.affinity.max_entries
            self.dispatcher = SharedDispatcher(
                settings,
                self.shared,
                self.prober,
                rng or random.Random(),
                self.clock,
                on_change=self._waiting_changed,
            )
        slots = self.ledger if self.shared is None else self.shared
        self.board = StatusBoard(
            self.prober, slots, self.dispatcher, self.stats, shared=self.shared
        )
        self.feed = Feed(self.board, self.stats_view)

    def snapshot(self) -> Snapshot:
        """The status snapshot (GET /router/status): the one picture everything reads."""
        return self.board.snapshot()

    def model_key(self, name: str) -> str:
        """The routing key of the model a client asked for (aliases applied). A glob
        pattern (``claude-*``) only maps names no box has: a model the fleet serves is
        never shadowed by a pattern."""
        key = model_key(name, self.aliases)
        if self.patterns and not self.prober.fleet.knows(key):
            target = pattern_alias(name, self.patterns)
            if target is not None:
                return model_key(target, self.aliases)
        return key

    def _waiting_changed(self) -> None:
        self.board.changed()

    def _heard(self, event: dict[str, Any]) -> None:
        """Another replica's news: a conversation's box, service, rate use, a 429."""
        if isinstance(self.dispatcher, SharedDispatcher):
            self.dispatcher.heard(event)

    def _slot_freed(self) -> None:
        self.dispatcher.drain()  # a slot freed on some replica: waiters here may fit now

    @property
    def usage(self) -> Usage:
        """Slots in use: fleet-wide when replicas share state."""
        return self.ledger.usage if self.shared is None else self.shared.usage

    def _usage_changed(self) -> None:
        self.stats.usage_changed(self.usage)
        if self._retiring:
            self._retire_idle()
        self.board.changed()

    def reconfigure(self, settings: Settings) -> dict[str, list[str]]:
        """Take a new config without dropping a request: boxes added start probing,
        changed ones take their new settings, removed ones drain and are forgotten once
        their last request ends. Returns what changed, by box name."""
        old, new = self.endpoints, {ep.name: ep for ep in settings.endpoints}
        self.settings = settings
        self.aliases, self.patterns = split_aliases(settings.aliases)
        self.endpoints = {**old, **new}  # removed boxes stay known until they retire
        self.upstream.retime(settings.timeouts)
        self.upstream.limits = settings.limits
        removed = self.prober.reconfigure(settings, adapters(self.aliases))
        self._retiring = (self._retiring - new.keys()) | set(removed)
        self.dispatcher.reconfigure(settings)
        self._retire_idle()
        return {
            "added": sorted(new.keys() - old.keys()),
            "removed": sorted(removed),
            "changed": sorted(n for n in new.keys() & old.keys() if new[n] != old[n]),
        }

    def _retire_idle(self) -> None:
        busy = {box for box, _model in self.usage}
        for name in sorted(self._retiring - busy):
            self._retiring.discard(name)
            self.prober.remove(name)
            self.endpoints.pop(name, None)

    def _fleet_changed(self) -> None:
        self.metrics.fleet_changed(self.prober.fleet)
        self.board.changed()
        self.dispatcher.drain()  # a box came back, or a model loaded: waiters may fit now

    async def start(self) -> None:
        await self.stats.start()  # totals survive restarts (stats.path)
        await self.upstream.open()
        if self.shared is not None:
            await self.shared.start()
        await self.prober.start()
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()
        await self.prober.stop()
        if self.shared is not None:
            await self.shared.stop()
        await self.upstream.close()
        await self.stats.stop()

    def target(self, box: str, plan: Plan) -> Target:
        return self._target(box, plan(self.prober.fleet.by_name[box]))

    def _target(self, box: str, out: Outbound) -> Target:
        ep = self.endpoints[box]
        instead = out.instead
        fallback = None
        if instead is not None:

            def fallback(answer: bytes) -> Target | None:
                other = instead(answer)
                return None if other is None else self._target(box, other)

        if out.translator is not None:
            out.translator.limit_events(self.settings.limits.max_box_event_bytes)
        url, key = ep.url + out.path, ep.api_key
        return Target(box, url, key, out.body, out.translator, fallback, out.path)

    async def exchange(
        self,
        req: Request,
        display_name: str,
        *,
        plan: Plan,
        headers: Mapping[str, str],
        path: str,
        method: str = "POST",
        slot: bool = True,
        conversation: str | None = None,
        ticket: Ticket | None = None,
        stream_error: Callable[[ProxyError, bytes], bytes] | None = None,
    ) -> Exchange:
        """The exchange that places ``req`` (waiting for a slot if need be) and sends
        what ``plan`` says to the chosen box, trying others if that box fails."""
        placing = Placing(
            self,
            req,
            display_name,
            plan,
            slot=slot,
            conversation=conversation,
            ticket=ticket or make_ticket(headers, {}, b""),
        )
        return Exchange(
            self.upstream,
            placing,
            method=method,
            headers=headers,
            model=req.model,
            path=path,
            max_attempts=self.settings.failover.max_attempts if slot else 1,
            stream_error=stream_error,
        )

    def stats_view(self, snapshot: Snapshot) -> dict[str, Any]:
        """The dashboard's figures: ``Stats.view``, and the costs routing has learned per
        box and model (``routing.costs``)."""
        view = self.stats.view(snapshot)
        view["learned"] = self.dispatcher.traffic.costs.table()
        return view

    def _refused(self, box: str, retry_after: str | None) -> None:
        """The box answered 429: it rests, and the request tries another."""
        seconds = retry_after_seconds(retry_after, self.settings.routing.cooldown)
        self.dispatcher.traffic.refused(box, seconds, self.clock.now())

    def _failed(self, box: str) -> None:
        """Traffic found ``box`` failing before its answer could be relayed."""
        self.prober.report(box, ok=False)
        self.prober.poke(box)

    def _done(self, outcome: Outcome, user: str, sharing: int = 1) -> None:
        counts = self.stats.finished(outcome)
        if outcome.box and outcome.sent is not None and outcome.status < 400:
            ttft = None if outcome.first_byte is None else outcome.first_byte - outcome.sent
            now = self.clock.now()
            traffic = self.dispatcher.traffic
            traffic.finished(outcome.box, outcome.model, user, ttft, counts, now, sharing)
        if outcome.box and outcome.first_byte is not None and outcome.status < 500:
            if outcome.error is None:
                # A success closes the breaker; a stream that broke was already reported
                # as a failure by the relay, when it broke.
                self.prober.report(outcome.box, ok=True)
                self.prober.report_model(outcome.box, outcome.model, ok=True)
            box = self.prober.fleet.by_name.get(outcome.box)
            if box is not None and outcome.model not in box.loaded:
                # It loaded the model (and may have evicted another): look now, not in 2 s.
                self.prober.poke(outcome.box)
        self.board.changed()


class Placing:
    """One request's ``Placement``: the dispatcher places it (holding a slot, unless it
    takes none), and what the exchange reports goes to the services that keep account."""

    def __init__(
        self,
        svc: Services,
        req: Request,
        display_name: str,
        plan: Plan,
        *,
        slot: bool,
        conversation: str | None,
        ticket: Ticket,
    ) -> None:
        self._svc = svc
        self._req = req
        self._name = display_name
        self._plan = plan
        self._slot = slot
        self._conversation = conversation
        self._ticket = ticket
        self._lease: Lease | None = None  # the slot of the latest attempt

    async def place(self, failed: frozenset[str]) -> tuple[Lease | None, Target]:
        svc, req = self._svc, self._req
        if failed:
            req = svc.dispatcher.excluding(req, failed)
        if not self._slot:
            picked = await svc.dispatcher.resolve(req, self._name)
            return None, svc.target(picked.box.name, self._plan)
        lease = self._lease = await svc.dispatcher.acquire(req, self._name, self._ticket)
        try:
            return lease, svc.target(lease.box, self._plan)
        except BaseException:
            lease.release()  # a plan that cannot be made for this box holds no slot
            raise

    def failed(self, box: str) -> None:
        self._svc._failed(box)

    def model_failed(self, box: str, model: str) -> None:
        self._svc.prober.report_model(box, model, ok=False)

    def refused(self, box: str, retry_after: str | None) -> None:
        self._svc._refused(box, retry_after)

    def lacks(self, box: str, path: str) -> None:
        self._svc.prober.lacks(box, path)

    def done(self, outcome: Outcome) -> None:
        lease = self._lease
        sharing = lease.sharing if lease is not None and lease.box == outcome.box else 1
        self._svc._done(outcome, self._ticket.user, sharing)
        if self._conversation is not None and outcome.box and 0 < outcome.status < 400:
            self._svc.dispatcher.remember(self._conversation, outcome.box)


def make_ticket(
    headers: Mapping[str, str],
    doc: Mapping[str, Any],
    body: bytes,
    key_name: str | None = None,
) -> Ticket:
    """Who asks (for fair share) and how urgently (``X-Priority``), from the request."""
    value = headers.get("x-priority", "normal").strip().lower() or "normal"
    if value not in PRIORITIES:
        raise BadRequest(f"X-Priority must be high, normal or low, not {value!r}")
    return Ticket(user_of(key_name, headers, doc), PRIORITIES[value], estimate_tokens(body))
