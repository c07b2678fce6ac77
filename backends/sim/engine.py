"""The simulated box's engine: everything it does that is not HTTP.

Its scheduler imitates Ollama's closely enough that a proxy's routing decisions matter:

- at most ``max_loaded`` models are loaded (OLLAMA_MAX_LOADED_MODELS); loading another
  evicts the least-recently-used *idle* model, and waits while none is idle;
- concurrent requests for a model that is not loaded share one load of ``load_time``;
- a loaded model has ``num_parallel`` slots (OLLAMA_NUM_PARALLEL); further requests wait
  FIFO per model, and beyond ``max_queue`` waiting requests the box refuses (QueueFull);
- each slot remembers the tokens of its last request (prefix cache); a request takes the
  free slot sharing the longest prefix, and only the rest of its prompt costs time;
- a model stays loaded ``keep_alive`` seconds after its last use (0: unload right away,
  negative: forever). Unloading or evicting a model drops its slots and their caches.

The HTTP layer (``backends.sim.ollama``) holds a ``Lease`` while it generates; the lease's
exit is the only way a slot is given back. Below the scheduler are the models it runs,
deterministic functions of names and prompts: the template that turns a request into
token ids (one per word, so a conversation's next turn continues what a slot remembers),
the answers, the embeddings, and the sizes /api/tags reports. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import math
import random
import re
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol


class Limits(Protocol):
    """The part of ``SimConfig`` the scheduler reads; read live so tests may change it."""

    max_loaded: int
    num_parallel: int
    max_queue: int
    load_time: float
    keep_alive: float


class QueueFull(Exception):
    """More requests are already waiting than ``max_queue`` allows (Ollama answers 503)."""


@dataclass
class SimStats:
    """Counters since the box was built (they survive a stop/start).

    ``requests`` counts every inference request (chat, generate, embed, embeddings),
    including those answered by a fault switch. ``loads`` counts on-demand loads, not
    ``preloaded`` models. ``evictions`` are LRU evictions to make room; ``unloads`` are
    keep-alive expiries and explicit unloads. ``active`` is in generation now, ``waiting``
    is waiting for a load or a slot. ``max_held_per_model`` is the most requests of a
    model the box held at once, generating or queued behind its slots: above
    ``num_parallel`` it was sent more than it can serve at once (oversubscribed).
    """

    requests: int = 0
    loads: int = 0
    evictions: int = 0
    unloads: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    active: int = 0
    waiting: int = 0
    max_active_per_model: dict[str, int] = field(default_factory=dict)
    max_held_per_model: dict[str, int] = field(default_factory=dict)
    served_by_model: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelState(enum.Enum):
    WAITING = "waiting"  # for room among max_loaded; occupies nothing yet
    LOADING = "loading"
    LOADED = "loaded"


@dataclass(eq=False)
class _Slot:
    tokens: Sequence[int] = ()
    busy: bool = False
    used: float = 0.0  # monotonic


@dataclass(eq=False)
class _Model:
    name: str
    slots: list[_Slot]
    free: int  # slot claims not handed out yet (a woken waiter already holds one)
    keep_alive: float
    state: ModelState = ModelState.WAITING
    refs: int = 0  # requests holding or awaiting this model; while > 0 it is never evicted
    active: int = 0
    last_used: float = 0.0  # monotonic, for LRU
    expires_at: float = math.inf  # wall clock, for /api/ps
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    load: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class Loaded:
    name: str
    expires_at: float  # wall-clock seconds; math.inf when kept forever


@dataclass(eq=False)
class Lease:
    """One request's hold on one slot of a loaded model."""

    model: str
    load_duration: float  # seconds this request waited for its model to load
    cached: int  # prompt tokens found in the slot's cache
    _slot: _Slot

    def remember(self, tokens: Sequence[int]) -> None:
        """What the slot's cache holds after this request (prompt + generated)."""
        self._slot.tokens = tokens


def detached_lease(model: str) -> Lease:
    """A lease on no slot of this box: a cloud model's request, answered elsewhere."""
    return Lease(model, 0.0, 0, _Slot())


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    """Loads, evicts and hands out slots; see the module docstring for the rules."""

    def __init__(self, limits: Limits, stats: SimStats) -> None:
        self._limits = limits
        self._stats = stats
        self._models: dict[str, _Model] = {}
        self._held: dict[str, int] = {}  # inference requests per model, queued or generating
        self._room_waiters: list[asyncio.Future[None]] = []

    # -- queries ------------------------------------------------------------------

    def loaded(self) -> list[Loaded]:
        """Loaded models (not those still loading), most recently used first."""
        models = [m for m in self._models.values() if m.state is ModelState.LOADED]
        models.sort(key=lambda m: m.last_used, reverse=True)
        return [Loaded(m.name, m.expires_at) for m in models]

    # -- operations ---------------------------------------------------------------

    def preload(self, name: str) -> None:
        """Load at start, instantly; ignored once ``max_loaded`` models are loaded."""
        if name in self._models or self._occupied() >= self._limits.max_loaded:
            return
        model = self._new(name)
        model.state = ModelState.LOADED
        self._release_idle(model)

    async def load(self, name: str, keep_alive: float | None) -> float:
        """Ollama's empty-prompt request: load (or keep) a model without taking a slot."""
        model = self._pin(name, keep_alive)
        try:
            return await self._until_loaded(model)
        finally:
            self._unpin(model)

    def unload(self, name: str) -> None:
        """Ollama's empty prompt with keep_alive 0: unload now, or once the model is idle."""
        model = self._models.get(name)
        if model is None:
            return
        model.keep_alive = 0.0
        if model.refs == 0 and model.state is ModelState.LOADED:
            self._stats.unloads += 1
            self._drop(model)

    @asynccontextmanager
    async def lease(
        self, name: str, prompt: Sequence[int], keep_alive: float | None
    ) -> AsyncIterator[Lease]:
        """Wait for the model and a slot; the slot is given back however the body ends."""
        stats = self._stats
        if stats.waiting >= self._limits.max_queue:
            raise QueueFull
        model = self._pin(name, keep_alive)
        held = self._held[name] = self._held.get(name, 0) + 1
        if held > stats.max_held_per_model.get(name, 0):
            stats.max_held_per_model[name] = held
        try:
            stats.waiting += 1
            try:
                load_duration = await self._until_loaded(model)
                await self._claim(model)
            finally:
                stats.waiting -= 1
            slot, cached = self._take_slot(model, prompt)
            try:
                yield Lease(name, load_duration, cached, slot)
            finally:
                slot.busy = False
                model.active -= 1
                stats.active -= 1
                self._hand_on(model)
        finally:
            self._held[name] -= 1
            self._unpin(model)

    def reset(self) -> None:
        """Forget every model, as a restarted Ollama would (call after the server stopped)."""
        for model in self._models.values():
            if model.timer is not None:
                model.timer.cancel()
            if model.load is not None:
                model.load.cancel()
        self._models.clear()
        self._wake_room()

    # -- loading and eviction -----------------------------------------------------

    def _new(self, name: str) -> _Model:
        n = max(1, self._limits.num_parallel)
        model = _Model(name, [_Slot() for _ in range(n)], n, self._limits.keep_alive)
        self._models[name] = model
        return model

    def _pin(self, name: str, keep_alive: float | None) -> _Model:
        model = self._models.get(name) or self._new(name)
        model.refs += 1
        # As in Ollama, the latest request's keep_alive decides how long the model stays.
        model.keep_alive = self._limits.keep_alive if keep_alive is None else keep_alive
        model.last_used = time.monotonic()
        model.expires_at = _expiry(model.keep_alive)
        if model.timer is not None:
            model.timer.cancel()
            model.timer = None
        return model

    def _unpin(self, model: _Model) -> None:
        model.refs -= 1
        model.last_used = time.monotonic()
        if model.refs or self._models.get(model.name) is not model:
            return
        if model.state is ModelState.WAITING:
            # Nobody wants it any more: give up the place in line for room.
            if model.load is not None:
                model.load.cancel()
            del self._models[model.name]
        elif model.state is ModelState.LOADED:
            self._release_idle(model)
        # LOADING: _load() releases it when the load finishes.

    async def _until_loaded(self, model: _Model) -> float:
        if model.state is ModelState.LOADED:
            return 0.0
        if model.load is None:
            model.load = asyncio.create_task(self._load(model))
        started = time.perf_counter()
        # Shielded: one impatient client must not cancel a load others are waiting for.
        await asyncio.shield(model.load)
        return time.perf_counter() - started

    async def _load(self, model: _Model) -> None:
        while not self._make_room():
            await self._room_changed()
        model.state = ModelState.LOADING
        self._stats.loads += 1
        if self._limits.load_time > 0:
            await asyncio.sleep(self._limits.load_time)
        model.state = ModelState.LOADED
        model.last_used = time.monotonic()
        if model.refs == 0:
            self._release_idle(model)

    def _occupied(self) -> int:
        return sum(m.state is not ModelState.WAITING for m in self._models.values())

    def _make_room(self) -> bool:
        while self._occupied() >= self._limits.max_loaded:
            idle = [
                m for m in self._models.values() if m.state is ModelState.LOADED and m.refs == 0
            ]
            if not idle:
                return False
            self._stats.evictions += 1
            self._drop(min(idle, key=lambda m: m.last_used))
        return True

    async def _room_changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        await waiter

    def _wake_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _release_idle(self, model: _Model) -> None:
        """The model has no requests left: start its keep-alive, and let loads use it."""
        model.expires_at = _expiry(model.keep_alive)
        if model.keep_alive == 0:
            self._stats.unloads += 1
            self._drop(model)
        elif model.keep_alive > 0:
            loop = asyncio.get_running_loop()
            model.timer = loop.call_later(model.keep_alive, self._expire, model)
        self._wake_room()

    def _expire(self, model: _Model) -> None:
        model.timer = None
        if self._models.get(model.name) is model and model.refs == 0:
            self._stats.unloads += 1
            self._drop(model)

    def _drop(self, model: _Model) -> None:
        if model.timer is not None:
            model.timer.cancel()
            model.timer = None
        if self._models.get(model.name) is model:
            del self._models[model.name]
        self._wake_room()

    # -- slots --------------------------------------------------------------------

    async def _claim(self, model: _Model) -> None:
        if model.free > 0 and not model.waiters:
            model.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        model.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._hand_on(model)  # a claim was handed to us just as we left: pass it on
            else:
                model.waiters.remove(waiter)
            raise

    def _hand_on(self, model: _Model) -> None:
        """A claim came back: give it to the longest waiter, else return it to the pool."""
        while model.waiters:
            waiter = model.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        model.free += 1

    def _take_slot(self, model: _Model, prompt: Sequence[int]) -> tuple[_Slot, int]:
        """The free slot sharing the longest prefix with the prompt; when none shares at
        least half, the least recently used one, so a new conversation spares the others'."""
        free = [slot for slot in model.slots if not slot.busy]
        prefixes = [common_prefix(slot.tokens, prompt) for slot in free]
        i = max(range(len(free)), key=prefixes.__getitem__)
        hit = bool(prompt) and 2 * prefixes[i] >= len(prompt)
        if not hit:
            i = min(range(len(free)), key=lambda j: free[j].used)
        best, cached = free[i], prefixes[i]
        best.busy = True
        best.used = time.monotonic()
        best.tokens = prompt
        stats = self._stats
        if hit:
            stats.cache_hits += 1
        else:
            stats.cache_misses += 1
        model.active += 1
        stats.active += 1
        stats.served_by_model[model.name] = stats.served_by_model.get(model.name, 0) + 1
        if model.active > stats.max_active_per_model.get(model.name, 0):
            stats.max_active_per_model[model.name] = model.active
        return best, cached


def _expiry(keep_alive: float) -> float:
    return time.time() + keep_alive if keep_alive >= 0 else math.inf


# -- the models: deterministic functions of names and prompts ----------------------------


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> float | None:
    """Seconds from a request's keep_alive: a number of seconds, or a Go duration string
    ("5m", "1h30m", "0", "-1"). None when absent; negative means keep loaded forever."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if _NUMBER.fullmatch(body):
            return sign * float(body)
        parts = _DURATION.findall(body)
        if parts and "".join(n + u for n, u in parts) == body:
            return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    raise ValueError(f"invalid keep_alive {value!r}")


def token_ids(text: str) -> list[int]:
    """One id per word; crc32 rather than hash() so ids survive a process restart."""
    return [zlib.crc32(word.encode()) % 128_000 for word in text.split()]


def marker(kind: str) -> int:
    """A special token (a role header, an image) outside the word range."""
    return 128_000 + zlib.crc32(kind.encode()) % 256


class Prompt(NamedTuple):
    tokens: list[int]
    seed: str  # the text the answer is derived from
    empty: bool  # no prompt at all: Ollama's "load the model" request
    tool: str | None  # the tool the model calls, when tools were offered to a user turn


def images(items: Any) -> list[int]:
    """One token per image; a hash of its start, so the same image caches alike."""
    if not isinstance(items, list):
        return []
    return [marker("image:" + str(image)[:64]) for image in items]


def chat_prompt(body: dict[str, Any]) -> Prompt:
    """The chat template: tools, then each message as a role token and its words."""
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("messages must be a list of objects")
    tools = body.get("tools")
    functions = [
        t["function"]
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    prompt: list[int] = []
    for fn in functions:
        prompt += [marker("tool"), *token_ids(f"{fn.get('name')} {fn.get('description')}")]
    tool = None
    if functions and messages and messages[-1].get("role") == "user":
        tool = str(functions[0].get("name", "tool"))
    for message in messages:
        prompt.append(marker(str(message.get("role", "user"))))
        prompt += token_ids(str(message.get("content") or ""))
        prompt += images(message.get("images"))
    prompt.append(marker("assistant"))  # the generation prompt; the answer follows it
    seed = str(messages[-1].get("content") or "") if messages else ""
    return Prompt(prompt, seed, not messages, tool)


def generate_prompt(body: dict[str, Any]) -> Prompt:
    """A previous answer's context, then the system prompt and the prompt's words."""
    text = str(body.get("prompt") or "")
    context = body.get("context")
    prompt = [t for t in context if isinstance(t, int)] if isinstance(context, list) else []
    prompt += (
        token_ids(str(body.get("system") or "")) + token_ids(text) + images(body.get("images"))
    )
    return Prompt(prompt, text, not text and not body.get("images"), None)


_VOCABULARY_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven bright stars shine above "
    "quiet hills and rivers carry cold water toward distant seas where ships sail "
    "under grey clouds as birds sing softly in green trees near old stone bridges"
)
_VOCABULARY = _VOCABULARY_TEXT.split()
_SAMPLES: dict[str, Any] = {"integer": 42, "number": 4.2, "boolean": True, "array": []}


def answer_tokens(seed: str, n: int) -> list[str]:
    """n deterministic tokens; each ends with a space except the last."""
    h = zlib.crc32(seed.encode())
    words = [_VOCABULARY[(h + i * (h % 7 + 3)) % len(_VOCABULARY)] for i in range(n)]
    return [w + " " for w in words[:-1]] + words[-1:]


def json_tokens(fmt: Any, words: list[str]) -> list[str]:
    """A JSON object (shaped by the schema's properties when given) cut into tokens."""
    plain = [w.strip() for w in words] or ["ok"]
    props = fmt.get("properties") if isinstance(fmt, dict) else None
    if not isinstance(props, dict) or not props:
        props = {"answer": {}}
    obj = {}
    for i, (key, spec) in enumerate(props.items()):
        kind = spec.get("type") if isinstance(spec, dict) else None
        text = " ".join(plain[: i + 1] if kind else plain)
        obj[key] = _SAMPLES.get(kind, text) if isinstance(kind, str) else text
    # stdlib json, for its ", " and ": " separators: they give the text several tokens.
    return re.findall(r"\S+\s*", json.dumps(obj))


def embedding(text: str, dim: int) -> list[float]:
    """A unit vector from the text's hash, as /api/embed returns normalised vectors."""
    rng = random.Random(zlib.crc32(text.encode()))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def family(name: str) -> str:
    """A model family from the name: "qwen2.5:7b" is a qwen."""
    match = re.match(r"[a-z]+", name.rsplit("/", 1)[-1].lower())
    return match.group(0) if match else "llama"


def parameter_count(name: str) -> float:
    """From a size tag ("7b", "135m") when there is one, else one of a few common sizes."""
    tag = re.search(r"(\d+(?:\.\d+)?)([bm])\b", name.lower())
    if tag:
        return float(tag.group(1)) * (1e9 if tag.group(2) == "b" else 1e6)
    return (1.2e9, 3.2e9, 7.6e9, 8.0e9)[zlib.crc32(name.encode()) % 4]


def size_bytes(name: str) -> int:
    # Q4_K_M stores about 0.6 bytes per parameter; the crc keeps equal sizes apart.
    return int(parameter_count(name) * 0.6) + zlib.crc32(name.encode()) % 1_000_000


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()
