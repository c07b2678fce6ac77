"""The running parts of one app, built from settings and opened in its lifespan.

Nothing here is module-level: ``create_app(settings)`` builds its own ``Services``, so two
apps can run side by side in one process (tests do).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import replace

from backends.adapters import adapters
from backends.errors import ProxyError
from backends.prober import Prober
from backends.relay import Exchange, Outbound, Outcome, Target
from backends.settings import Settings
from backends.state import BoxState
from backends.upstream import Upstream
from routing.choose import Request
from routing.dispatch import Dispatcher
from routing.ledger import Lease, Ledger
from routing.status import StatusBoard

# How to send one client request to a given box (its path and body; translation if its
# kind speaks another API). Called again for each box tried.
Plan = Callable[[BoxState], Outbound]


class Services:
    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.endpoints = {ep.name: ep for ep in settings.endpoints}
        self.upstream = Upstream(settings.timeouts)
        self.board = StatusBoard(lambda: self.prober.fleet, lambda: self.ledger.usage)
        self.ledger = Ledger(on_change=self.board.changed)
        self.prober = Prober(settings, self.upstream, adapters(), on_change=self.board.changed)
        self.dispatcher = Dispatcher(settings, self.ledger, self.prober, rng or random.Random())

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
    ) -> Exchange:
        """Reserve a box for ``req`` and prepare the exchange that ``plan`` says to send."""
        lease: Lease | None
        if slot:
            lease = await self.dispatcher.acquire(req, display_name)
            box = lease.box
        else:
            lease, box = None, (await self.dispatcher.resolve(req, display_name)).box.name

        async def retry(failed: frozenset[str]) -> tuple[Lease, Target] | None:
            try:
                new = await self.dispatcher.acquire(
                    replace(req, exclude=req.exclude | failed), display_name
                )
            except ProxyError:
                return None
            return new, self.target(new.box, plan)

        return Exchange(
            self.upstream,
            lease,
            self.target(box, plan),
            method=method,
            headers=headers,
            model=req.model,
            path=path,
            retry=retry if slot else None,
            on_failure=self.prober.poke,
            on_done=self._done,
        )

    def _done(self, outcome: Outcome) -> None:
        self.board.requests += 1
        if outcome.error or outcome.status >= 500:
            self.board.errors += 1
        self.board.changed()
