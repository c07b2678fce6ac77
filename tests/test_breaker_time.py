"""The breaker is time-driven: whatever its timer does, an open breaker of a healthy box
closes within ``breaker_max_backoff`` plus one probe interval.

A ``ManualClock`` moves time; a jittery wrapper fires each timer early (as uvloop does,
a few ms before the monotonic clock reaches the deadline), late, or never. Between
timers the box is probed every ``probe.ps`` seconds, and whenever routing would send it a
request (its snapshot says it is routable) that request succeeds: the box is healthy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ollamux.backends.kinds import adapters
from ollamux.backends.prober import Prober
from ollamux.backends.upstream import Upstream
from ollamux.routing.breaker import BreakerState
from ollamux.routing.clock import ManualClock, Timer
from ollamux.routing.settings import parse_settings
from ollamux.routing.state import Health


class _Never:
    def cancel(self) -> None:
        pass


class JitteryClock:
    """``clock`` whose timers fire ``shift`` seconds off their deadline (negative:
    early), or never (``shift`` is None)."""

    def __init__(self, clock: ManualClock, shifts: list[float | None]) -> None:
        self.clock = clock
        self.shifts = shifts
        self.armed = 0

    def now(self) -> float:
        return self.clock.now()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        shift = self.shifts[self.armed % len(self.shifts)]
        self.armed += 1
        if shift is None:
            return _Never()
        # Early, but never in the instant it is armed: a real loop's time moves on.
        return self.clock.call_at(max(self.clock.now() + 0.001, when + shift), callback)


shift = st.one_of(st.none(), st.floats(-0.05, 0.05))


@settings(max_examples=300, deadline=None)
@given(
    backoff=st.floats(0.1, 10),
    max_extra=st.floats(0, 50),
    probe=st.floats(0.05, 5),
    failures=st.integers(1, 5),
    reopenings=st.integers(0, 4),
    shifts=st.lists(shift, min_size=1, max_size=8),
)
def test_an_open_breaker_of_a_healthy_box_closes_in_time_whatever_the_timers_do(
    backoff: float,
    max_extra: float,
    probe: float,
    failures: int,
    reopenings: int,
    shifts: list[float | None],
) -> None:
    max_backoff = backoff + max_extra
    config = parse_settings(
        {
            "endpoints": [{"url": "http://127.0.0.1:9", "name": "a"}],
            "probe": {"ps": probe},
            "failover": {
                "breaker_failures": failures,
                "breaker_backoff": backoff,
                "breaker_max_backoff": max_backoff,
            },
        }
    )
    manual = ManualClock()
    prober = Prober(
        config, Upstream(config.timeouts), adapters(), clock=JitteryClock(manual, shifts)
    )
    # Its probes pass (as a probe of a healthy box would have published).
    prober.fleet = prober.fleet.replace(replace(prober.fleet.by_name["a"], health=Health.HEALTHY))
    for _ in range(failures):
        prober.report("a", ok=False)
    assert prober.fleet.by_name["a"].breaker is BreakerState.OPEN
    # A few trials fail (the backoff doubles up to its cap) before the box is healthy.
    trials_left = reopenings
    opened = manual.now()
    step = probe / 4
    while True:
        manual.advance(step)  # timers due fire on the way
        if round(manual.now() / step) % 4 == 0:
            prober.fleet  # a probe reads the box's state  # noqa: B018
        box = prober.fleet.by_name["a"]  # routing reads it for the next request
        if box.routable:
            if trials_left:
                trials_left -= 1
                prober.report("a", ok=False)
                assert prober.fleet.by_name["a"].breaker is BreakerState.OPEN
                opened = manual.now()
                continue
            prober.report("a", ok=True)
            break
        assert manual.now() - opened <= max_backoff + probe + step, (
            f"open for {manual.now() - opened:.3f}s (max_backoff {max_backoff:.3f}, "
            f"probe {probe:.3f})"
        )
    assert prober.fleet.by_name["a"].breaker is BreakerState.CLOSED
