"""The ledger counts slots in use exactly; a lease hands its slot back exactly once."""

from __future__ import annotations

import pytest

from ollamux.routing.ledger import Lease, Ledger


def test_take_and_give_count_per_box_and_model_and_never_go_negative() -> None:
    changes = []
    ledger = Ledger(on_change=lambda: changes.append(1))
    ledger.take("a", "m")
    ledger.take("a", "m")
    ledger.take("b", "m")
    assert dict(ledger.usage) == {("a", "m"): 2, ("b", "m"): 1}
    assert ledger.in_flight() == 3
    ledger.give("a", "m")
    ledger.give("b", "m")
    ledger.give("b", "m")  # one too many: the count stays at zero, the key goes
    assert dict(ledger.usage) == {("a", "m"): 1}
    assert len(changes) == 6


def test_the_usage_view_is_live_and_read_only() -> None:
    ledger = Ledger()
    view = ledger.usage
    ledger.take("a", "m")
    assert view == {("a", "m"): 1}
    with pytest.raises(TypeError):
        view[("a", "m")] = 5  # type: ignore[index]
    assert ledger.usage == {("a", "m"): 1}


def test_a_lease_is_released_once_however_often_it_is_called() -> None:
    ledger = Ledger()
    freed: list[Lease] = []

    def free(lease: Lease) -> None:
        freed.append(lease)
        ledger.give(lease.box, lease.model)

    ledger.take("a", "m")
    lease = Lease("a", "m", free)
    lease.release()
    lease.release()
    assert freed == [lease] and lease.released
    assert ledger.in_flight() == 0
