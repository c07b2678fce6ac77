"""From a model name to a reserved slot: choose() under the ledger's lock, and what to do
when nothing fits (one coalesced refresh of model lists before a 404, 503 otherwise)."""

from __future__ import annotations

import random

from backends.errors import ModelNotFound, NoCapacity
from backends.prober import Prober
from backends.settings import Settings
from backends.state import Usage
from routing.choose import Candidate, NoRoute, Request, choose
from routing.ledger import Lease, Ledger


class Dispatcher:
    def __init__(self, settings: Settings, ledger: Ledger, prober: Prober, rng: random.Random):
        self._settings = settings
        self._ledger = ledger
        self._prober = prober
        self._rng = rng

    def request(self, model: str, exclude: frozenset[str] = frozenset()) -> Request:
        return Request(model, priority_routing=self._settings.priority_routing, exclude=exclude)

    def pick(self, req: Request) -> Candidate | NoRoute:
        """The box that would serve ``req`` now, without reserving a slot."""
        return choose(self._prober.fleet, self._ledger.usage, req, self._rng.random)

    async def acquire(self, req: Request, display_name: str) -> Lease:
        """Reserve a slot on the best box for ``req``; raise if none can take it."""

        def decide(usage: Usage) -> tuple[str, str] | NoRoute:
            picked = choose(self._prober.fleet, usage, req, self._rng.random)
            return (picked.box.name, req.model) if isinstance(picked, Candidate) else picked

        result = await self._ledger.lease(decide)
        if result is NoRoute.UNKNOWN_MODEL:
            await self._prober.refresh_models()
            result = await self._ledger.lease(decide)
        if isinstance(result, Lease):
            return result
        raise no_route_error(result, display_name)

    async def resolve(self, req: Request, display_name: str) -> Candidate:
        """Like ``acquire`` for requests that take no slot (``/api/show``)."""
        picked = self.pick(req)
        if picked is NoRoute.UNKNOWN_MODEL:
            await self._prober.refresh_models()
            picked = self.pick(req)
        if isinstance(picked, Candidate):
            return picked
        raise no_route_error(picked, display_name)


def no_route_error(reason: NoRoute, model: str) -> ModelNotFound | NoCapacity:
    if reason is NoRoute.UNKNOWN_MODEL:
        return ModelNotFound(f'model "{model}" not found, try pulling it first')
    return NoCapacity(f'no healthy box can serve model "{model}" right now', retry_after=5)
