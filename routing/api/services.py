"""The running parts of one app, built from settings and opened in its lifespan.

Nothing here is module-level: ``create_app(settings)`` builds its own ``Services``, so two
apps can run side by side in one process (tests do).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from ollamux.backends.kinds import adapters
from ollamux.backends.prober import Prober
from ollamux.backends.relay import Exchange, Outbound, Outcome, Target
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
from ollamux.routing.state import BoxState, canonical_model, model_key
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
        self.aliases = {canonical_model(own): name for own, name in settings.aliases}
        self.upstream = Upstream(settings.timeouts)
        self.metrics = Metrics(self.snapshot)
        self.stats = Stats(settings.stats, self.metrics, self.snapshot)
        self.ledger = Ledger(on_change=self._usage_changed)
        self.prober = Prober(
            settings, self.upstream, adapters(self.aliases), on_change=self._fleet_changed
        )
        self.dispatcher = Dispatcher(
            settings,
            self.ledger,
            self.prober,
            rng or random.Random(),
            self.clock,
            on_change=self._waiting_changed,
        )
        self.board = StatusBoard(self.prober, self.ledger, self.dispatcher, self.stats)
        self.feed = Feed(self.board, self.stats_view)

    def snapshot(self) -> Snapshot:
        """The status snapshot (GET /router/status): the one picture everything reads."""
        return self.board.snapshot()

    def model_key(self, name: str) -> str:
        """The routing key of the model a client asked for (aliases applied)."""
        return model_key(name, self.aliases)

    def _waiting_changed(self) -> None:
        self.board.changed()

    def _usage_changed(self) -> None:
        self.stats.usage_changed(self.ledger.usage)
        if self._retiring:
            self._retire_idle()
        self.board.changed()

    def reconfigure(self, settings: Settings) -> dict[str, list[str]]:
        """Take a new config without dropping a request: boxes added start probing,
        changed ones take their new settings, removed ones drain and are forgotten once
        their last request ends. Returns what changed, by box name."""
        old, new = self.endpoints, {ep.name: ep for ep in settings.endpoints}
        self.settings = settings
        self.aliases = {canonical_model(own): name for own, name in settings.aliases}
        self.endpoints = {**old, **new}  # removed boxes stay known until they retire
        self.upstream.retime(settings.timeouts)
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
        busy = {box for box, _model in self.ledger.usage}
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
        await self.prober.start()
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()
        await self.prober.stop()
        await self.upstream.close()
        await self.stats.stop()

    def target(self, box: str, plan: Plan) -> Target:
        ep = self.endpoints[box]
        return _target(box, ep.url, ep.api_key, plan(self.prober.fleet.by_name[box]))

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
        ticket = ticket or make_ticket(headers, {}, b"")

        async def place(failed: frozenset[str]) -> tuple[Lease | None, Target]:
            again = self.dispatcher.excluding(req, failed) if failed else req
            if not slot:
                picked = await self.dispatcher.resolve(again, display_name)
                return None, self.target(picked.box.name, plan)
            lease = await self.dispatcher.acquire(again, display_name, ticket)
            try:
                return lease, self.target(lease.box, plan)
            except BaseException:
                lease.release()  # a plan that cannot be made for this box holds no slot
                raise

        def done(outcome: Outcome) -> None:
            self._done(outcome, ticket.user)
            if conversation is not None and outcome.box and 0 < outcome.status < 400:
                self.dispatcher.remember(conversation, outcome.box)

        return Exchange(
            self.upstream,
            place,
            method=method,
            headers=headers,
            model=req.model,
            path=path,
            max_attempts=self.settings.failover.max_attempts if slot else 1,
            on_failure=self._failed,
            on_refused=self._refused,
            on_done=done,
            on_unsupported=self.prober.lacks,
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

    def _done(self, outcome: Outcome, user: str) -> None:
        counts = self.stats.finished(outcome)
        if outcome.box and outcome.sent is not None and outcome.status < 400:
            ttft = None if outcome.first_byte is None else outcome.first_byte - outcome.sent
            now = self.clock.now()
            self.dispatcher.traffic.finished(outcome.box, outcome.model, user, ttft, counts, now)
        if outcome.box and outcome.first_byte is not None and outcome.status < 500:
            if outcome.error is None:
                # A success closes the breaker; a stream that broke was already reported
                # as a failure by the relay, when it broke.
                self.prober.report(outcome.box, ok=True)
            box = self.prober.fleet.by_name.get(outcome.box)
            if box is not None and outcome.model not in box.loaded:
                # It loaded the model (and may have evicted another): look now, not in 2 s.
                self.prober.poke(outcome.box)
        self.board.changed()


def _target(box: str, url: str, api_key: str | None, out: Outbound) -> Target:
    fallback = None if out.fallback is None else _target(box, url, api_key, out.fallback)
    return Target(box, url + out.path, api_key, out.body, out.translator, fallback, out.path)


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
