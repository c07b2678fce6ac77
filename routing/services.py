"""The running parts of one app, built from settings and opened in its lifespan.

Nothing here is module-level: ``create_app(settings)`` builds its own ``Services``, so two
apps can run side by side in one process (tests do).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace

from backends.adapters import adapters
from backends.errors import ProxyError
from backends.prober import Prober
from backends.relay import Exchange, Outcome, Target
from backends.settings import Settings
from backends.upstream import Upstream
from routing.choose import Request
from routing.dispatch import Dispatcher
from routing.ledger import Lease, Ledger
from routing.status import StatusBoard


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

    def target(self, box: str, path: str) -> Target:
        ep = self.endpoints[box]
        return Target(box=box, url=ep.url + path, api_key=ep.api_key)

    async def exchange(
        self,
        req: Request,
        display_name: str,
        *,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        method: str = "POST",
        slot: bool = True,
    ) -> Exchange:
        """Reserve a box for ``req`` and prepare the exchange that forwards ``body`` there."""
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
            return new, self.target(new.box, path)

        return Exchange(
            self.upstream,
            lease,
            self.target(box, path),
            method=method,
            body=body,
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
