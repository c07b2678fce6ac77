"""The estimator and the honest tier rules: tables of snapshots and learned costs in,
the order out. Pure: no boxes, no sleeps; time is an argument."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from types import MappingProxyType

import pytest

from ollamux.routing.accounting import Counts
from ollamux.routing.choose import Request, Tier, rank
from ollamux.routing.costs import CacheView, Conversations, Costs, Learned
from ollamux.routing.estimate import PRIOR_LOAD, Ask, estimate
from ollamux.routing.explain import predicted_ttft
from ollamux.routing.policies import Signals
from ollamux.routing.state import BoxState, Fleet, Health
from tests.test_dispatch_clock import box as one_slot_box
from tests.test_dispatch_clock import dispatcher, settle

M = "llama3.2:latest"
X = "qwen2.5:7b"


def box(name: str, *loaded: str, index: int = 0, slots: int = 2) -> BoxState:
    return BoxState(
        name=name,
        url=f"http://127.0.0.1/{name}",
        kind="ollama",
        index=index,
        priority=0,
        slots=slots,
        health=Health.HEALTHY,
        models=frozenset({M, X}),
        loaded=frozenset(loaded),
        answered=True,
    )


def learned(
    *,
    service: float = 1.0,
    load: float = 5.0,
    prefill: float = 1000.0,
    capacity: dict[str, int] | None = None,
    caches: CacheView | None = None,
    boxes: tuple[str, ...] = ("a", "b", "c"),
) -> Learned:
    """Costs as if traffic had shown them: the same on every box."""
    keys = [(b, m) for b in boxes for m in (M, X)]
    return Learned(
        load=MappingProxyType(dict.fromkeys(keys, load)),
        prefill=MappingProxyType(dict.fromkeys(keys, prefill)),
        decode=MappingProxyType(dict.fromkeys(keys, 100.0)),
        service=MappingProxyType(dict.fromkeys(keys, service)),
        output=MappingProxyType({M: 10.0, X: 10.0}),
        capacity=MappingProxyType(capacity or {}),
        caches=caches or CacheView(),
    )


def order(
    fleet: Fleet,
    usage: dict[tuple[str, str], int],
    costs: Learned,
    *,
    strategy: str = "default",
    waiting: int = 0,
    req: Request | None = None,
) -> list[tuple[str, Tier]]:
    signals = Signals(learned=costs, waiting=MappingProxyType({M: waiting}), now=100.0)
    ranked = rank(
        fleet, usage, req or Request(M, strategy=strategy), random.Random(0).random, signals
    )
    return [(c.box.name, c.tier) for c in ranked]


BOTH = pytest.mark.parametrize("strategy", ["default", "fastest"])


@BOTH
def test_a_busy_resident_model_beats_a_cold_load_when_the_wait_is_shorter(strategy: str) -> None:
    # a holds the model, both slots busy, answers take 1 s: a slot frees in ~0.33 s;
    # b would load it for 5 s. Its "free slot" is no free slot: the request waits for a.
    f = Fleet.of((box("a", M), box("b", index=1)))
    ranked = order(f, {("a", M): 2}, learned(service=1.0, load=5.0), strategy=strategy)
    assert ranked[0] == ("a", Tier.SATURATED)
    assert ("b", Tier.SATURATED) in ranked


@BOTH
def test_a_cold_load_wins_when_the_wait_is_longer(strategy: str) -> None:
    # Answers take 30 s and four requests wait already: the 5 s load is sooner.
    f = Fleet.of((box("a", M), box("b", index=1)))
    ranked = order(f, {("a", M): 2}, learned(service=30.0), strategy=strategy, waiting=4)
    assert ranked[0] == ("b", Tier.FREE)


@pytest.mark.parametrize(
    ("service", "first"),
    [
        (1.0, ("a", Tier.SATURATED)),  # a frees in ~0.33 s: sooner than a 1 s load on b
        (30.0, ("b", Tier.FREE)),  # a frees in ~10 s: the load is sooner
    ],
)
def test_before_any_load_is_seen_the_prior_prices_one(
    service: float, first: tuple[str, Tier]
) -> None:
    f = Fleet.of((box("a", M), box("b", index=1)))
    costs = learned(service=service)
    costs = Learned(service=costs.service, decode=costs.decode, output=costs.output)
    assert order(f, {("a", M): 2}, costs)[0] == first


def test_before_any_answer_is_seen_the_card_order_stands() -> None:
    f = Fleet.of((box("a", M), box("b", index=1)))
    assert order(f, {("a", M): 2}, Learned())[0] == ("b", Tier.FREE)


@BOTH
def test_a_load_that_would_evict_a_busy_model_is_refused_while_another_option_exists(
    strategy: str,
) -> None:
    # b is full (holds one model, X, which is in use): loading M there means waiting for
    # X to finish and throwing it out. c has room. a holds M but is saturated.
    f = Fleet.of((box("a", M), box("b", X, index=1), box("c", index=2)))
    usage = {("a", M): 2, ("b", X): 1}
    costs = learned(service=20.0, capacity={"b": 1})
    ranked = dict(order(f, usage, costs, strategy=strategy))
    assert ranked["b"] is Tier.SATURATED
    assert order(f, usage, costs, strategy=strategy)[0] == ("c", Tier.FREE)


@BOTH
def test_a_second_cold_load_waits_for_the_load_already_under_way(strategy: str) -> None:
    # Nobody has the model in memory yet; a is loading it (one request placed), with a
    # free slot. b would start a load of its own: a is sooner.
    f = Fleet.of((box("a"), box("b", index=1)))
    ranked = order(f, {("a", M): 1}, learned(service=1.0, load=4.0), strategy=strategy)
    assert ranked[0] == ("a", Tier.FREE) and ranked[1] == ("b", Tier.SATURATED)


def test_a_load_that_would_evict_a_busy_model_stays_when_it_is_the_only_option() -> None:
    f = Fleet.of((box("b", X),))
    ranked = order(f, {("b", X): 1}, learned(capacity={"b": 1}))
    assert ranked == [("b", Tier.FREE)]


def test_evicting_an_idle_model_used_lately_costs_its_reload() -> None:
    # b and c are both full with an idle model; b's was used a moment ago and is resident
    # nowhere else, c's has not been used for minutes: load where it costs nobody.
    base = learned(capacity={"b": 1, "c": 1})
    costs = Learned(
        **{
            **{f: getattr(base, f) for f in base.__slots__},  # type: ignore[attr-defined]
            "last_used": MappingProxyType({("b", X): 95.0, ("c", "old:latest"): 1.0}),
        }
    )
    f = Fleet.of((box("b", X), box("c", "old:latest", index=1)))
    assert order(f, {}, costs)[0][0] == "c"
    e = estimate(f.boxes[0], 0, Ask(M), f, {}, costs, {}, 0.0, 100.0)
    # X was used 5 s ago: half of its 5 s reload counts (fading over RECENT = 10 s).
    assert e.evicts == X and e.penalty == pytest.approx(2.5) and not e.evicts_busy


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (1.0, "a"),  # a's wait (~0.33 s) is shorter than the 3.9 s of prefill it saves
        (30.0, "b"),  # a's wait (~10 s) is longer: the cold cache elsewhere is sooner
    ],
)
def test_the_cache_box_wins_while_its_wait_is_short(service: float, expected: str) -> None:
    f = Fleet.of((box("a", M), box("b", M, index=1)))
    req = Request(M, affinity="a", strategy="fastest", prompt_tokens=4000, cached_tokens=3900)
    assert order(f, {("a", M): 2}, learned(service=service), req=req)[0][0] == expected


def cached(*placements: tuple[str, str, float], slots: int = 2) -> Conversations:
    """Conversations placed in this order: (conversation, box, when), 100 tokens each."""
    conv = Conversations()
    for name, where, when in placements:
        conv.asked(name, M, 100, None, when)
        conv.placed(name, where, M, slots, when)
    return conv


def test_a_conversation_whose_slot_another_took_saves_nothing() -> None:
    # a has 2 slots: c1, then c2 and c3 took them; c1's prefix is gone (LRU).
    conv = cached(("c1", "a", 0.0), ("c2", "a", 0.1), ("c3", "a", 0.2))
    assert conv.asked("c1", M, 150, "a", 0.5) == 0
    assert conv.asked("c3", M, 150, "a", 0.5) == 100
    f = Fleet.of((box("a", M),))
    ask = Ask(M, prompt_tokens=2000, affinity="a", cached_tokens=2000)
    e = estimate(f.boxes[0], 0, ask, f, {}, learned(), {}, 0.0, 0.0)
    assert e.prefill == 0.0 and e.saved == 2.0


def test_a_request_whose_prefix_is_cached_nowhere_goes_where_a_slot_is_spare() -> None:
    # a's two slots hold two live conversations; b's hold one: a newcomer on a would push
    # one of a's out, on b it takes the spare slot.
    conv = cached(("c1", "a", 99.0), ("c2", "a", 99.5), ("c3", "b", 99.5))
    f = Fleet.of((box("a", M), box("b", M, index=1)))
    costs = learned(caches=conv.view)
    new = Request(M, conversation="c9", prompt_tokens=500)
    assert [order(f, {}, costs, req=new)[0][0] for _ in range(3)] == ["b"] * 3
    e = estimate(f.boxes[0], 0, Ask(M, 500), f, {}, costs, {}, 0.0, 100.0)
    assert e.displaced == pytest.approx(0.1)  # c1's 100 cached tokens at 1000 tokens/s
    assert "displaces a cached conversation" in e.describe()


def test_a_conversation_that_has_ended_leaves_its_slot_to_newcomers() -> None:
    # Turns come 1 s after each reply: a conversation quiet for 4 of those has ended.
    conv = Conversations()
    for turn in range(3):
        conv.asked("c1", M, 100, "a", 2.0 * turn)
        conv.placed("c1", "a", M, 1, 2.0 * turn)
        conv.served("c1", 2.0 * turn + 1.0)
    assert conv.live_for() == pytest.approx(4.0)
    assert conv.view.displaced("a", M, 1, now=6.0) == 100  # 1 s after its last reply
    assert conv.view.displaced("a", M, 1, now=9.5) == 0  # 4.5 s: ended


def test_a_moved_conversation_and_an_unloaded_model_leave_no_cache_behind() -> None:
    conv = cached(("c1", "a", 0.0), ("c2", "a", 0.1))
    conv.asked("c1", M, 150, "a", 1.0)
    conv.placed("c1", "b", M, 2, 1.0)  # moved: its slot on a holds nothing it will use
    assert conv.view.holds("a", M, "c2") == 100 and conv.view.displaced("a", M, 2, 1.0) == 0
    assert conv.view.holds("b", M, "c1") == 150 and conv.view.holds("a", M, "c1") == 0
    conv.unloaded("b", M)
    assert conv.view.holds("b", M, "c1") == 0


def test_the_estimate_adds_wait_load_prefill_and_decode() -> None:
    f = Fleet.of((box("a", M), box("b", index=1)))
    costs = learned(service=3.0, load=2.0, prefill=500.0)
    ask = Ask(M, prompt_tokens=1000)
    busy = estimate(f.boxes[0], 2, ask, f, {("a", M): 2}, costs, {}, 1.0, 0.0)
    assert busy.wait == pytest.approx(2 * 3.0 / 3)  # one waiting ahead, 3 s answers, 2 slots
    assert busy.load == 0.0 and busy.prefill == pytest.approx(2.0)
    assert busy.decode == pytest.approx(0.1)
    cold = estimate(f.boxes[1], 0, ask, f, {}, costs, {}, 0.0, 0.0)
    assert cold.wait == 0.0 and cold.load == 2.0 and cold.ttft == pytest.approx(4.0)
    loading = estimate(f.boxes[1], 1, ask, f, {}, costs, {}, 0.0, 0.0)
    assert loading.load == 1.0  # a load under way is half done, on average


def test_priors_for_a_model_never_seen() -> None:
    f = Fleet.of((box("b"),))
    e = estimate(f.boxes[0], 0, Ask(M), f, {}, Learned(), {}, 0.0, 0.0)
    assert e.load == PRIOR_LOAD and not e.known


def test_costs_learn_from_final_chunks() -> None:
    costs = Costs()
    cold = Counts(
        prompt_tokens=800,
        output_tokens=40,
        prompt_seconds=0.4,
        decode_seconds=1.0,
        load_seconds=3.0,
    )
    costs.finished("a", M, 3.5, cold, now=10.0)
    warm = Counts(prompt_tokens=5, output_tokens=40, prompt_seconds=0.01, decode_seconds=0.5)
    costs.finished("a", M, 0.2, warm, now=20.0)
    v = costs.view
    assert v.load[("a", M)] == 3.0  # the warm answer's tiny load is no load
    assert v.prefill[("a", M)] == 2000.0  # 5 tokens time overhead, not the prefill rate
    assert v.decode[("a", M)] == pytest.approx(40 + 0.3 * (80 - 40))
    assert v.service[("a", M)] == pytest.approx(1.5 + 0.3 * (0.7 - 1.5))
    assert v.last_used[("a", M)] == 20.0
    # Another box with no figures of its own borrows the model's average.
    assert v.figure(v.load, "b", M) == 3.0 and v.knows()


def test_rates_are_learned_per_number_of_requests_sharing_the_model() -> None:
    # Alone, a decodes 100 tokens/s; with a second request beside it, 50 each.
    costs = Costs()
    alone = Counts(prompt_tokens=800, output_tokens=100, prompt_seconds=0.4, decode_seconds=1.0)
    shared = Counts(prompt_tokens=800, output_tokens=100, prompt_seconds=0.8, decode_seconds=2.0)
    costs.finished("a", M, 0.5, alone, now=1.0, sharing=1)
    costs.finished("a", M, 0.9, shared, now=2.0, sharing=2)
    v = costs.view
    assert v.rate(v.decode, v.decode_at, "a", M, 1) == 100.0
    assert v.rate(v.decode, v.decode_at, "a", M, 2) == 50.0
    assert v.rate(v.prefill, v.prefill_at, "a", M, 2) == 1000.0
    # A level never seen takes the rate whatever the level (here both answers' average).
    assert v.rate(v.decode, v.decode_at, "a", M, 5) == pytest.approx(100 + 0.3 * (50 - 100))
    assert v.describe("a", M)["decode_tokens_per_s_by_sharing"] == {"1": 100.0, "2": 50.0}
    # The estimate for a box already running one request of the model decodes at the
    # shared rate: the usual 100-token answer takes 2 s there, 1 s on an idle box.
    f = Fleet.of((box("a", M),))
    busy = estimate(f.boxes[0], 1, Ask(M, 800), f, {("a", M): 1}, v, {}, 0.0, 3.0)
    idle = estimate(f.boxes[0], 0, Ask(M, 800), f, {}, v, {}, 0.0, 3.0)
    assert busy.decode == pytest.approx(2.0) and idle.decode == pytest.approx(1.0)
    assert busy.prefill == pytest.approx(0.8) and idle.prefill == pytest.approx(0.4)


def test_capacity_is_learned_from_an_eviction_not_from_an_expiry() -> None:
    costs = Costs()
    two = Fleet.of((box("a", M, X),))
    costs.see(two)
    costs.see(Fleet.of((box("a", M),)))  # X expired (keep_alive): nothing learned
    assert "a" not in costs.view.capacity
    costs.see(two)
    costs.see(Fleet.of((box("a", M, "phi3:mini"),)))  # X out as phi3 came in: full at 2
    assert costs.view.capacity["a"] == 2


# --- the dispatcher, on a clock the test holds --------------------------------------


async def test_the_dispatcher_waits_for_the_busy_resident_model_and_says_what_it_predicted() -> (
    None
):
    d, ledger, clock = dispatcher([one_slot_box("a", 0), one_slot_box("b", 1, loaded=False)])
    cold = Counts(
        prompt_tokens=100,
        output_tokens=10,
        prompt_seconds=0.1,
        decode_seconds=0.9,
        load_seconds=5.0,
    )
    d.traffic.finished("a", M, "someone", 5.5, cold, clock.now())  # a 5 s load, 1.4 s answers
    first = await d.acquire(d.request(M), M)
    assert first.box == "a"
    second = asyncio.ensure_future(d.acquire(d.request(M), M))
    await settle()
    assert not second.done() and d.room.size == 1  # not a 5 s load on b: a frees sooner
    clock.advance(0.5)
    first.release()
    await settle()
    lease = second.result()
    assert lease.box == "a" and ledger.usage == {("a", M): 1}
    assert "waited 0.50 s" in lease.reason
    assert "on arrival est ttft 0.70 s" in lease.reason  # one 1.4 s answer ahead, 1 slot
    lease.release()


def test_the_predicted_time_to_first_token_is_read_back_from_the_route_reason() -> None:
    placed = "a: model loaded, 0/2 slots, est ttft 0.38 s (wait 0.00, load 0.00, prefill 0.38)"
    assert predicted_ttft(placed + ", finish 0.58 s (loaded, free slot; default)") == 0.38
    waited = placed + " (loaded, free slot; fastest); waited 1.20 s; on arrival est ttft 1.05 s"
    assert predicted_ttft(waited) == 1.05  # what was said on arrival, not at placement
    assert predicted_ttft("a: model loaded, 0/2 slots (loaded, free slot; least-busy)") is None


async def test_explaining_a_turn_does_not_count_as_one() -> None:
    # /router/explain asks as a turn of the conversation without sending it: the pause
    # before the conversation's real next turn is still learned from its real arrival.
    d, _ledger, clock = dispatcher([one_slot_box("a", 0)])
    first = await d.acquire(d.request(M, conversation="c", prompt_tokens=100), M)
    first.release()
    d.remember("c", "a")  # its answer ended at 0 s
    clock.advance(1.0)
    looked = d.request(M, conversation="c", prompt_tokens=150, looking=True)
    assert looked.affinity == "a" and looked.cached_tokens == 100
    clock.advance(1.0)
    d.request(M, conversation="c", prompt_tokens=150)  # the real turn, 2 s after
    assert d.traffic.costs.conversations.live_for() == pytest.approx(8.0)  # 4 x 2 s


def test_a_probe_during_a_second_load_does_not_undercount_capacity() -> None:
    # a held M and X; X left for phi3 and M for another model still loading (not listed
    # yet): the probe shows phi3 alone, but a was full at 2.
    costs = Costs()
    costs.see(Fleet.of((box("a", M, X),)))
    costs.see(Fleet.of((box("a", "phi3:mini"),)))
    assert costs.view.capacity == {"a": 2}


def test_a_box_never_seen_full_is_taken_to_be_like_the_others_unless_it_held_more() -> None:
    costs = Costs()
    a, b, c = box("a", M, X, index=0), box("b", X, index=1), box("c", M, X, index=2)
    costs.see(Fleet.of((a, b, replace(c, loaded=frozenset({M, X, "phi3:mini"})))))
    costs.see(Fleet.of((replace(a, loaded=frozenset({M, "phi3:mini"})), b, c)))
    v = costs.view
    assert v.capacity == {"a": 2}  # a swapped X for phi3: it holds 2 at most
    assert v.capacity_of("b") == 2  # never seen full, never seen holding more: like a
    assert v.capacity_of("c") is None  # held 3 at once: not like a, not known
