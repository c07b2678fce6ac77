"""What the boxes hold between probes: the loads this proxy started, laid over the last
probe's view, and what routing makes of it. Pure and on a clock the test holds."""

from __future__ import annotations

from dataclasses import replace

from ollamux.routing.accounting import Counts
from ollamux.routing.dispatch import NORMAL
from ollamux.routing.ledger import Lease
from ollamux.routing.residency import MAX_AGE, Residency
from ollamux.routing.state import BoxState, Fleet
from tests.test_dispatch_clock import dispatcher
from tests.test_estimate import M, X, box

PHI = "phi3:mini"


def test_a_load_on_a_full_box_shows_its_eviction_until_a_probe_sees_it() -> None:
    probed = Fleet.of((box("a", M, X),))
    res = Residency()
    res.started("a", PHI, evicts=X, now=0.0)
    assert res.view(probed, 0.1).by_name["a"].loaded == {M, PHI}
    # A probe taken before the load finished still shows X: the load stands.
    stale = Fleet.of((replace(probed.boxes[0], version="again"),))
    assert res.view(stale, 1.0).by_name["a"].loaded == {M, PHI}
    # The box evicted M, not X (its least recently used idle model): the probe is the truth.
    seen = Fleet.of((box("a", X, PHI),))
    assert res.view(seen, 2.0) is seen  # nothing laid over it any more


def test_a_load_no_probe_ever_shows_stops_counting() -> None:
    probed = Fleet.of((box("a", M),))
    res = Residency()
    res.started("a", X, evicts=None, now=0.0)
    assert res.view(probed, MAX_AGE - 1).by_name["a"].loaded == {M, X}
    assert res.view(probed, MAX_AGE + 1) is probed


def test_a_request_for_the_model_a_load_evicted_does_not_go_back_to_that_box() -> None:
    # b holds X and is full (it showed it holds one model at most); a holds M; c holds X,
    # its one slot taken. A request for M while a is saturated loads M on b, evicting X.
    # Until a probe shows it, the probe's view still says b holds X with a free slot: a
    # request for X must wait for c rather than make b reload X over M's running request.
    a = _box("a", M, index=0)
    b = _box("b", X, index=1)
    c = replace(_box("c", X, index=2), models=frozenset({X}))
    d, ledger, clock = dispatcher([a, b, c])
    d.traffic.costs.see(Fleet.of((b,)))
    d.traffic.costs.see(Fleet.of((replace(b, loaded=frozenset({"other:latest"})),)))
    assert d.traffic.costs.view.capacity == {"b": 1}
    # Answers take 5 s: loading M on b (0.5 s) beats waiting for a.
    learned = Counts(prompt_tokens=100, output_tokens=10, prompt_seconds=0.1, decode_seconds=5.0)
    d.traffic.finished("a", M, "u", 0.2, learned, clock.now())
    d.traffic.finished("b", X, "u", 0.2, replace(learned, load_seconds=0.5), clock.now())
    ledger.take("c", X)
    first = d._place_now(d.request(M), NORMAL)
    second = d._place_now(d.request(M), NORMAL)
    assert isinstance(first, Lease) and first.box == "a"
    assert isinstance(second, Lease) and second.box == "b"
    assert "evicts qwen2.5:7b" in second.reason
    assert d.fleet.by_name["b"].loaded == {M}
    third = d._place_now(d.request(X), NORMAL)
    assert not isinstance(third, Lease)  # it waits for c
    for lease in (first, second):
        lease.release()
    ledger.give("c", X)
    assert ledger.usage == {}


def _box(name: str, *loaded: str, index: int) -> BoxState:
    return replace(box(name, *loaded, index=index, slots=1), priority=index)
