"""The ledger: atomic select-and-reserve, release exactly once, never negative."""

from __future__ import annotations

import asyncio

from ollamux.routing.ledger import Lease, Ledger


async def test_lease_and_release_once() -> None:
    changes = []
    ledger = Ledger(on_change=lambda: changes.append(1))
    lease = await ledger.lease(lambda usage: ("a", "m"))
    assert isinstance(lease, Lease)
    assert ledger.usage == {("a", "m"): 1}
    lease.release()
    lease.release()
    assert dict(ledger.usage) == {} and ledger.in_flight() == 0
    assert len(changes) == 2  # reserve, release: the second release changed nothing


async def test_decide_sees_reservations_made_before_it() -> None:
    ledger = Ledger()

    def least_used(usage: object) -> tuple[str, str]:
        assert isinstance(usage, type(ledger.usage))
        a, b = ledger.usage.get(("a", "m"), 0), ledger.usage.get(("b", "m"), 0)
        return ("a", "m") if a <= b else ("b", "m")

    leases = await asyncio.gather(*(ledger.lease(least_used) for _ in range(10)))
    assert dict(ledger.usage) == {("a", "m"): 5, ("b", "m"): 5}
    for lease in leases:
        assert isinstance(lease, Lease)
        lease.release()
    assert ledger.in_flight() == 0


async def test_a_refusal_reserves_nothing() -> None:
    ledger = Ledger()
    assert await ledger.lease(lambda usage: "no") == "no"
    assert ledger.in_flight() == 0 and dict(ledger.usage) == {}
