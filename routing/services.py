"""The running parts of one app, built from settings and opened in its lifespan.

Nothing here is module-level: ``create_app(settings)`` builds its own ``Services``, so two
apps can run side by side in one process (tests do).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from backends.adapters import adapters
from backends.errors import BadRequest
from backends.prober import Prober
from backends.relay import Exchange, Outbound, Outcome, Target
from backends.settings import Settings
from backends.state import BoxState, canonical_model, model_key
from backends.upstream import Upstream
from routing.choose import Request
from routing.dispatch import Dispatcher
from routing.ledger import Lease, Ledger
from routing.status import StatusBoard
from routing.waiting import PRIORITIES

# How to send one client request to a given box (its path and body; translation if its
# kind speaks another API). Called again for each box tried.
Plan = Callable[[BoxState], Outbound]


class Services:
    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.endpoints = {ep.name: ep for ep in settings.endpoints}
        self.aliases = {canonical_model(own): name for own, name in settings.aliases}
        self.upstream = Upstream(settings.timeouts)
        self.board = StatusBoard(
            lambda: self.prober.fleet,
            lambda: self.ledger.usage,
            lambda: self.dispatcher.queue_status(),
        )
        self.ledger = Ledger(on_change=self.board.changed)
        self.prober = Prober(
            settings, self.upstream, adapters(self.aliases), on_change=self._fleet_changed
        )
        self.dispatcher = Dispatcher(settings, self.ledger, self.prober, rng or random.Random())

    def model_key(self, name: str) -> str:
        """The routing key of the model a client asked for (aliases applied)."""
        return model_key(name, self.aliases)

    def _fleet_changed(self) -> None:
        self.board.changed()
        self.dispatcher.drain()  # a box came back, or a model loaded: waiters may fit now

    async def start(self) -> None:
        await self.upstream.open()
        await self.prober.start()

    async def stop(self) -> None:
        await self.prober.stop()
        await self.upstream.close()

    def target(self, box: str, plan: Plan) -> Target:
        ep = self.endpoints[box]
        out = plan(self.prober.fleet.by_name[box])
        return Target(box, ep.url + out.path, ep.api_key, out.body, out.translator)

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
    ) -> Exchange:
        """The exchange that places ``req`` (waiting for a slot if need be) and sends
        what ``plan`` says to the chosen box, trying others if that box fails."""
        priority = _priority(headers)

        async def place(failed: frozenset[str]) -> tuple[Lease | None, Target]:
            again = self.dispatcher.excluding(req, failed) if failed else req
            if not slot:
                picked = await self.dispatcher.resolve(again, display_name)
                return None, self.target(picked.box.name, plan)
            lease = await self.dispatcher.acquire(again, display_name, priority)
            try:
                return lease, self.target(lease.box, plan)
            except BaseException:
                lease.release()  # a plan that cannot be made for this box holds no slot
                raise

        def done(outcome: Outcome) -> None:
            self._done(outcome)
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
            on_done=done,
        )

    def _failed(self, box: str) -> None:
        """Traffic found ``box`` failing before its answer could be relayed."""
        self.prober.report(box, ok=False)
        self.prober.poke(box)

    def _done(self, outcome: Outcome) -> None:
        self.board.requests += 1
        if outcome.error or outcome.status >= 500:
            self.board.errors += 1
        if outcome.box and outcome.first_byte is not None and outcome.status < 500:
            # The box answered: a broken stream later is the stream's failure, already told.
            self.prober.report(outcome.box, ok=outcome.error is None or outcome.client_gone)
            box = self.prober.fleet.by_name.get(outcome.box)
            if box is not None and outcome.model not in box.loaded:
                # It loaded the model (and may have evicted another): look now, not in 2 s.
                self.prober.poke(outcome.box)
        self.board.changed()


def _priority(headers: Mapping[str, str]) -> str:
    value = headers.get("x-priority", "normal").strip().lower() or "normal"
    if value not in PRIORITIES:
        raise BadRequest(f"X-Priority must be high, normal or low, not {value!r}")
    return value
