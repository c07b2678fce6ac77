"""The breaker's state machine, driven by an explicit clock."""

from __future__ import annotations

from ollamux.routing.breaker import Breaker, BreakerState


def test_opens_after_consecutive_failures_only() -> None:
    b = Breaker(failures_to_open=3, backoff=5)
    assert not b.failure(0) and not b.failure(1)
    b.success()
    assert not b.failure(2) and not b.failure(3)
    assert b.failure(4) and b.state is BreakerState.OPEN
    assert b.reopens_in(6) == 3


def test_half_open_trial_closes_or_reopens_with_doubled_backoff() -> None:
    b = Breaker(failures_to_open=1, backoff=5, max_backoff=12)
    b.failure(0)
    assert not b.tick(4.9) and b.state is BreakerState.OPEN
    assert b.tick(5.0) and b.state is BreakerState.HALF_OPEN
    assert b.failure(5.1) and b.state is BreakerState.OPEN and b.wait == 10
    assert not b.tick(14) and b.tick(15.1)
    assert b.failure(15.2) and b.wait == 12  # capped
    assert b.tick(27.2)
    assert b.success() and b.state is BreakerState.CLOSED and b.failures == 0
    assert not b.success()


def test_a_box_back_from_down_is_tried_at_once() -> None:
    b = Breaker(failures_to_open=1, backoff=60)
    b.failure(0)
    assert b.recovered() and b.state is BreakerState.HALF_OPEN
    assert not b.recovered()  # only an open breaker moves
