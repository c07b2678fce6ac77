"""Learned costs per (box, model), from the figures boxes report in every final chunk.

Ollama's final chunk says what one exchange cost: ``load_duration`` (a cold load, when
there was one), ``prompt_eval_count``/``prompt_eval_duration`` (only the prompt tokens
the slot did not have cached) and ``eval_count``/``eval_duration``; llama-server says the
same in ``timings``. ``Costs`` keeps exponentially weighted averages of them per
(box, model), and per box what the fleet snapshots have shown about residency: a model
that left a box in the same probe another arrived was evicted, so the number it held
then is that box's capacity. ``Conversations`` counts the live conversations each
(box, model) serves, so new ones spread before a box's prompt caches overflow.

``Learned`` is the read-only view ``rank()`` gets through ``Signals``; the estimator
(``routing.estimate``) turns it into seconds. A figure never observed falls back to the
same model's average on other boxes, then to any model's, then to a prior.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ollamux.routing.accounting import Counts
from ollamux.routing.state import Fleet

ALPHA = 0.3  # weight of the newest observation
MIN_PROMPT = 16  # fewer uncached tokens time the request's overhead, not the prefill rate
MIN_LOAD = 0.05  # seconds: less than this is a resident model answering, not a load
LIVE_WINDOW = 120.0  # seconds a conversation counts as live after its last turn
MAX_CONVERSATIONS = 100_000

Key = tuple[str, str]


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
    live: Mapping[Key, int] = field(default_factory=lambda: MappingProxyType({}))

    def figure(self, table: Mapping[Key, float], box: str, model: str) -> float | None:
        """This (box, model)'s figure, else the model's average elsewhere, else any's."""
        own = table.get((box, model))
        if own is not None:
            return own
        same = [v for (_, m), v in table.items() if m == model]
        pool = same or list(table.values())
        return sum(pool) / len(pool) if pool else None

    def describe(self, box: str, model: str) -> dict[str, float | None]:
        """This (box, model)'s own figures (None: not observed yet)."""
        key = (box, model)
        return {
            "load_s": _round(self.load.get(key)),
            "prefill_tokens_per_s": _round(self.prefill.get(key)),
            "decode_tokens_per_s": _round(self.decode.get(key)),
            "service_s": _round(self.service.get(key)),
        }

    def knows(self) -> bool:
        """Answers have been seen (of this model, else of others, whose average stands in
        for it): enough to order by."""
        return bool(self.service)

    def knows_load(self) -> bool:
        """Loads have been seen too: enough to refuse one."""
        return bool(self.service) and bool(self.load)


NOTHING_LEARNED = Learned()


class Costs:
    def __init__(self) -> None:
        self._load: dict[Key, float] = {}
        self._prefill: dict[Key, float] = {}
        self._decode: dict[Key, float] = {}
        self._service: dict[Key, float] = {}
        self._output: dict[str, float] = {}
        self._capacity: dict[str, int] = {}
        self._last_used: dict[Key, float] = {}
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
        )

    def placed(self, box: str, model: str, now: float) -> None:
        self._last_used[(box, model)] = now

    def finished(
        self, box: str, model: str, ttft: float | None, counts: Counts, now: float
    ) -> None:
        key = (box, model)
        self._last_used[key] = now
        load = counts.load_seconds or 0.0
        if load >= MIN_LOAD:
            _ewma(self._load, key, load)
        if counts.prompt_seconds and counts.prompt_tokens >= MIN_PROMPT:
            _ewma(self._prefill, key, counts.prompt_tokens / counts.prompt_seconds)
        if (rate := counts.decode_rate) is not None:
            _ewma(self._decode, key, rate)
        if counts.output_tokens:
            _ewma(self._output, model, float(counts.output_tokens))
        if ttft is not None:
            # What a slot is held for once the model is in memory: a waiting request's
            # unit of time. The box's own load time is not part of it.
            _ewma(self._service, key, max(0.0, ttft - load) + (counts.decode_seconds or 0.0))

    def see(self, fleet: Fleet) -> None:
        """A new fleet snapshot: a box whose loaded set lost a model while gaining another
        was full, so it holds at most what it holds now."""
        old, self._fleet = self._fleet, fleet
        if old is None or old is fleet:
            return
        for box in fleet.boxes:
            before = old.by_name.get(box.name)
            if before is None or not before.answered or not box.answered:
                continue
            if before.loaded - box.loaded and box.loaded - before.loaded:
                held = max(1, len(box.loaded))
                self._capacity[box.name] = min(self._capacity.get(box.name, held), held)

    def table(self) -> list[dict[str, object]]:
        """Every (box, model) with a learned figure, for the dashboard."""
        keys = sorted(self._load.keys() | self._prefill.keys() | self._decode.keys())
        keys = sorted(set(keys) | self._service.keys())
        return [{"box": b, "model": m, **self.view.describe(b, m)} for b, m in keys]


class Conversations:
    """Live conversations per (box, model): seen within ``LIVE_WINDOW`` seconds. Each
    conversation's last prompt size is kept too, the prefix its box may still cache."""

    def __init__(self, window: float = LIVE_WINDOW) -> None:
        self._window = window
        # conversation -> (box, model, last seen, prompt tokens); oldest first
        self._entries: OrderedDict[str, tuple[str, str, float, int]] = OrderedDict()
        self._live: dict[Key, int] = {}
        self._asked: dict[str, tuple[int, str]] = {}  # a turn not answered yet: tokens, model
        self.view: Mapping[Key, int] = MappingProxyType(self._live)

    def asked(self, conversation: str, model: str, tokens: int, now: float) -> int:
        """A turn arrives: its size is noted; returns the previous turn's prompt size (the
        tokens its box may hold), 0 for a new conversation."""
        self.prune(now)
        self._asked[conversation] = (tokens, model)
        if len(self._asked) > MAX_CONVERSATIONS:
            self._asked.pop(next(iter(self._asked)))
        entry = self._entries.get(conversation)
        return entry[3] if entry is not None else 0

    def served(self, conversation: str, box: str, now: float) -> None:
        asked = self._asked.pop(conversation, None)
        old = self._entries.get(conversation)
        if asked is None and old is None:
            return
        tokens, model = asked if asked is not None else (old[3], old[1])  # type: ignore[index]
        old = self._entries.pop(conversation, None)
        if old is not None:
            self._drop((old[0], old[1]))
        self._entries[conversation] = (box, model, now, tokens)
        self._live[(box, model)] = self._live.get((box, model), 0) + 1
        while len(self._entries) > MAX_CONVERSATIONS:
            _, (b, m, _, _) = self._entries.popitem(last=False)
            self._drop((b, m))

    def prune(self, now: float) -> None:
        while self._entries:
            conversation, (box, model, seen, _) = next(iter(self._entries.items()))
            if seen > now - self._window:
                break
            del self._entries[conversation]
            self._drop((box, model))

    def _drop(self, key: Key) -> None:
        left = self._live.get(key, 0) - 1
        if left > 0:
            self._live[key] = left
        else:
            self._live.pop(key, None)


def _ewma(table: dict[Key, float] | dict[str, float], key: object, new: float) -> None:
    old = table.get(key)  # type: ignore[call-overload]
    table[key] = new if old is None else old + ALPHA * (new - old)  # type: ignore[index]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
