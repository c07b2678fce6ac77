"""Learned costs per (box, model), from the figures boxes report in every final chunk.

Ollama's final chunk says what one exchange cost: ``load_duration`` (a cold load, when
there was one), ``prompt_eval_count``/``prompt_eval_duration`` (only the prompt tokens
the slot did not have cached) and ``eval_count``/``eval_duration``; llama-server says the
same in ``timings``. ``Costs`` keeps exponentially weighted averages of them per
(box, model), and per box what the fleet snapshots have shown about residency: a model
that left a box in the same probe another arrived was evicted, so the number it held
then is that box's capacity. ``Conversations`` shadows what each (box, model)'s slots
cache: which conversation's prefix is still there, and whose a newcomer would push out.

``Learned`` is the read-only view ``rank()`` gets through ``Signals``; the estimator
(``routing.estimate``) turns it into seconds. A figure never observed falls back to the
same model's average on other boxes, then to any model's, then to a prior.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from ollamux.routing.accounting import Counts
from ollamux.routing.state import Fleet

ALPHA = 0.3  # weight of the newest observation
MIN_PROMPT = 16  # fewer uncached tokens time the request's overhead, not the prefill rate
MIN_LOAD = 0.05  # seconds: less than this is a resident model answering, not a load
MAX_SHARING = 8  # rates are learned apart per number of requests sharing the model, to 8
LIVE_WINDOW = 120.0  # seconds a conversation counts as live after its last turn, at most
MIN_LIVE = 1.0  # seconds, at least
LIVE_GAPS = 4.0  # a conversation idle for this many of its usual gaps has ended
MAX_CONVERSATIONS = 100_000

Key = tuple[str, str]
Level = tuple[str, str, int]  # (box, model, requests of the model running together)
_T = TypeVar("_T")


def _view() -> Mapping[Key, float]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Learned:
    """What traffic taught, read-only. Rates are tokens per second, times seconds."""

    load: Mapping[Key, float] = field(default_factory=_view)
    prefill: Mapping[Key, float] = field(default_factory=_view)
    decode: Mapping[Key, float] = field(default_factory=_view)
    service: Mapping[Key, float] = field(default_factory=_view)  # a request, load excluded
    output: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    capacity: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    last_used: Mapping[Key, float] = field(default_factory=_view)
    caches: CacheView = field(default_factory=lambda: CacheView())
    prefill_at: Mapping[Level, float] = field(default_factory=lambda: MappingProxyType({}))
    decode_at: Mapping[Level, float] = field(default_factory=lambda: MappingProxyType({}))
    held: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # at once

    def figure(self, table: Mapping[Key, float], box: str, model: str) -> float | None:
        """This (box, model)'s figure, else the model's average elsewhere, else any's."""
        own = table.get((box, model))
        if own is not None:
            return own
        same = [v for (_, m), v in table.items() if m == model]
        pool = same or list(table.values())
        return sum(pool) / len(pool) if pool else None

    def rate(
        self,
        table: Mapping[Key, float],
        at: Mapping[Level, float],
        box: str,
        model: str,
        sharing: int,
    ) -> float | None:
        """A rate (``prefill`` or ``decode``, with its ``_at`` table) of this (box, model)
        with ``sharing`` requests of the model running at once: as seen at that level,
        else ``figure()`` (whatever the level)."""
        own = at.get((box, model, level(sharing)))
        return own if own is not None else self.figure(table, box, model)

    def capacity_of(self, box: str) -> int | None:
        """How many models ``box`` holds at most: its own, else the smallest any box has
        shown (boxes of one fleet tend to be alike; a probe corrects a wrong guess)."""
        own = self.capacity.get(box)
        if own is not None or not self.capacity:
            return own
        guess = min(self.capacity.values())
        # A box seen holding more than that at once is not like the others.
        return guess if self.held.get(box, 0) <= guess else None

    def describe(self, box: str, model: str) -> dict[str, object]:
        """This (box, model)'s own figures (None: not observed yet)."""
        key = (box, model)
        return {
            "load_s": _round(self.load.get(key)),
            "prefill_tokens_per_s": _round(self.prefill.get(key)),
            "decode_tokens_per_s": _round(self.decode.get(key)),
            "service_s": _round(self.service.get(key)),
            "decode_tokens_per_s_by_sharing": {
                str(n): _round(rate)
                for (b, m, n), rate in sorted(self.decode_at.items())
                if (b, m) == key
            },
        }

    def knows(self) -> bool:
        """Answers have been seen (of this model, else of others, whose average stands in
        for it): enough to order by."""
        return bool(self.service)


class Costs:
    def __init__(self) -> None:
        self._load: dict[Key, float] = {}
        self._prefill: dict[Key, float] = {}
        self._decode: dict[Key, float] = {}
        self._service: dict[Key, float] = {}
        self._output: dict[str, float] = {}
        self._capacity: dict[str, int] = {}
        self._last_used: dict[Key, float] = {}
        self._prefill_at: dict[Level, float] = {}
        self._decode_at: dict[Level, float] = {}
        self._held: dict[str, int] = {}  # per box, the most models it was seen holding
        self._fleet: Fleet | None = None
        self.conversations = Conversations()
        self.view = Learned(
            MappingProxyType(self._load),
            MappingProxyType(self._prefill),
            MappingProxyType(self._decode),
            MappingProxyType(self._service),
            MappingProxyType(self._output),
            MappingProxyType(self._capacity),
            MappingProxyType(self._last_used),
            self.conversations.view,
            MappingProxyType(self._prefill_at),
            MappingProxyType(self._decode_at),
            MappingProxyType(self._held),
        )

    def placed(self, box: str, model: str, now: float) -> None:
        self._last_used[(box, model)] = now

    def finished(
        self,
        box: str,
        model: str,
        ttft: float | None,
        counts: Counts,
        now: float,
        sharing: int = 1,
    ) -> None:
        """``sharing``: requests of the model the box ran once this one was placed (rates
        fall as more share the GPU; each level is learned apart)."""
        key = (box, model)
        at = (box, model, level(sharing))
        self._last_used[key] = now
        load = counts.load_seconds or 0.0
        if load >= MIN_LOAD:
            _ewma(self._load, key, load)
        if counts.prompt_seconds and counts.prompt_tokens >= MIN_PROMPT:
            prefill = counts.prompt_tokens / counts.prompt_seconds
            _ewma(self._prefill, key, prefill)
            _ewma(self._prefill_at, at, prefill)
        if (rate := counts.decode_rate) is not None:
            _ewma(self._decode, key, rate)
            _ewma(self._decode_at, at, rate)
        if counts.output_tokens:
            _ewma(self._output, model, float(counts.output_tokens))
        if ttft is not None:
            # What a slot is held for once the model is in memory: a waiting request's
            # unit of time. The box's own load time is not part of it.
            _ewma(self._service, key, max(0.0, ttft - load) + (counts.decode_seconds or 0.0))

    def see(self, fleet: Fleet) -> None:
        """A new fleet snapshot: a box whose loaded set lost a model while gaining another
        was full, so it holds at most what it held."""
        old, self._fleet = self._fleet, fleet
        if old is fleet:
            return
        for box in fleet.boxes:
            if box.answered and len(box.loaded) > self._held.get(box.name, 0):
                self._held[box.name] = len(box.loaded)
        if old is None:
            return
        for box in fleet.boxes:
            before = old.by_name.get(box.name)
            if before is None or not before.answered or not box.answered:
                continue
            for model in before.loaded - box.loaded:
                self.conversations.unloaded(box.name, model)
            if before.loaded - box.loaded and box.loaded - before.loaded:
                # It was full when the load began. Counting what it holds after would
                # undercount when the probe came while a second load was under way.
                held = max(1, len(before.loaded), len(box.loaded))
                self._capacity[box.name] = min(self._capacity.get(box.name, held), held)

    def table(self) -> list[dict[str, object]]:
        """Every (box, model) with a learned figure, for the dashboard."""
        keys = sorted(self._load.keys() | self._prefill.keys() | self._decode.keys())
        keys = sorted(set(keys) | self._service.keys())
        return [{"box": b, "model": m, **self.view.describe(b, m)} for b, m in keys]


class CacheView:
    """Read-only: what each (box, model)'s slots cache, as ``Conversations`` tracks it."""

    def __init__(self, owner: Conversations | None = None) -> None:
        self._owner = owner

    def holds(self, box: str | None, model: str, conversation: str | None) -> int:
        """The prompt tokens ``box`` still caches of ``conversation`` (0: none)."""
        if self._owner is None or box is None or conversation is None:
            return 0
        cache = self._owner.caches.get((box, model))
        entry = cache.get(conversation) if cache is not None else None
        return entry[1] if entry is not None else 0

    def displaced(self, box: str, model: str, slots: int, now: float) -> int:
        """The cached prompt tokens of the live conversation that one more conversation on
        (``box``, ``model``) would push out of its slot (0: a slot is spare, or the
        least recently used one holds a conversation that has ended)."""
        if self._owner is None:
            return 0
        cache = self._owner.caches.get((box, model))
        if not cache or len(cache) < slots:
            return 0
        seen, tokens = next(iter(cache.values()))
        return tokens if now - seen < self._owner.live_for() else 0


class Conversations:
    """Live conversations, and a shadow of what each box's prompt caches hold of them.

    Each slot of a loaded model keeps the prompt of the last request it served; a request
    takes the free slot that holds its own prefix, else the least recently used one (so
    do Ollama and llama-server). The shadow per (box, model) is that LRU: the ``slots``
    conversations placed there most lately; a model's load empties it. A conversation
    counts as live while its next turn may still come: within four of its usual gaps
    between a reply and the next turn (learned, at least ``MIN_LIVE``, at most
    ``LIVE_WINDOW`` seconds).
    """

    def __init__(self, window: float = LIVE_WINDOW) -> None:
        self._window = window
        self._gap: float | None = None  # seconds between a reply and the next turn
        # (box, model) -> conversation -> (last seen, prompt tokens); least recent first
        self.caches: dict[Key, OrderedDict[str, tuple[float, int]]] = {}
        self._asked: OrderedDict[str, int] = OrderedDict()  # a turn not placed yet: tokens
        self._answered: OrderedDict[str, float] = OrderedDict()  # when its last turn ended
        self.view = CacheView(self)

    def live_for(self) -> float:
        if self._gap is None:
            return self._window
        return min(self._window, max(MIN_LIVE, LIVE_GAPS * self._gap))

    def asked(self, conversation: str, model: str, tokens: int, box: str | None, now: float) -> int:
        """A turn arrives: its size is noted; returns the tokens ``box`` (the box of its
        previous turn) still caches of it, 0 if none (or a new conversation)."""
        answered = self._answered.pop(conversation, None)
        if answered is not None:
            gap = max(0.0, now - answered)
            self._gap = gap if self._gap is None else self._gap + ALPHA * (gap - self._gap)
        _bounded(self._asked, conversation, tokens)
        return self.view.holds(box, model, conversation)

    def placed(self, conversation: str, box: str, model: str, slots: int, now: float) -> None:
        """The turn went to ``box``: it takes the slot with its prefix, else the least
        recently used one."""
        tokens = self._asked.pop(conversation, 0)
        for key, held in self.caches.items():  # a moved conversation leaves nothing behind
            if key != (box, model):
                held.pop(conversation, None)
        cache = self.caches.setdefault((box, model), OrderedDict())
        before = cache.pop(conversation, None)
        if before is not None:  # a turn sent beside another keeps the longer prefix cached
            tokens = max(tokens, before[1])
        cache[conversation] = (now, tokens)
        while len(cache) > max(1, slots):
            cache.popitem(last=False)

    def served(self, conversation: str, now: float) -> None:
        """The turn's answer ended: the conversation's next turn may come from now on."""
        for cache in self.caches.values():
            if conversation in cache:
                cache[conversation] = (now, cache[conversation][1])
        _bounded(self._answered, conversation, now)

    def unloaded(self, box: str, model: str) -> None:
        """The model left ``box`` (or is loaded afresh): its slots cache nothing."""
        self.caches.pop((box, model), None)


NOTHING_LEARNED = Learned()


def _bounded(table: OrderedDict[str, _T], key: str, value: _T) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > MAX_CONVERSATIONS:
        table.popitem(last=False)


def level(sharing: int) -> int:
    return min(max(1, sharing), MAX_SHARING)


def _ewma(
    table: dict[Key, float] | dict[str, float] | dict[Level, float], key: object, new: float
) -> None:
    old = table.get(key)  # type: ignore[call-overload]
    table[key] = new if old is None else old + ALPHA * (new - old)  # type: ignore[index]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
