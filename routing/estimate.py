"""Where a request would finish soonest: seconds to first token and to the end, per box.

For one candidate box the estimate adds up what the request would go through there:

- **wait** for a slot: with every slot busy, the requests ahead (over the slots, plus
  this model's share of the waiting room) each hold a slot for the learned service time;
  the first of ``slots`` busy slots frees after about ``service / (slots + 1)``;
- **load** when the model is not resident (half of it when a load is already under
  way); when the box is full (``Learned.capacity``) the load evicts the idle model used
  least lately, and must first wait for one to finish when every resident model is busy
  or has waiters (``evicts_busy``). Evicting an idle model that was used lately and is
  resident nowhere else costs its reload later: the ``penalty`` (its load time, fading to
  nothing over ``RECENT`` seconds since its last use), counted in the ranking but not in
  the prediction;
- **prefill** of the prompt tokens the box will not find in cache: on the
  conversation's own box (affinity), what its slots still hold of it (the shadow in
  ``routing.costs.Conversations``); elsewhere the request takes the least recently used
  slot, and when that slot holds another live conversation, that one's prefill later is
  the ``displaced`` cost, counted in the ranking but not in the prediction;
- **decode** of the model's usual answer length at the box's learned rate.

Prefill and decode rates are taken at the number of the model's requests the box would
run with this one (each level learned apart, ``Learned.rate``), since they fall as more
requests share the GPU.

A figure this (box, model) has not shown yet is the model's average on other boxes, else
any model's, else a prior; ``known`` says whether any answers have been seen (only then
does the estimate order boxes, or refuse a load for outlasting a wait; a load not seen
yet is priced at the optimistic ``PRIOR_LOAD``): a fresh proxy keeps the card's order
until it has evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ollamux.routing.costs import Learned
from ollamux.routing.state import BoxState, Fleet, Usage

# Seconds to load a model when no load has been seen yet on any box: optimistic, so a
# fleet whose models all start resident still tries one load and learns what it costs.
PRIOR_LOAD = 1.0
PRIOR_PREFILL = 1000.0  # prompt tokens per second
PRIOR_DECODE = 30.0  # output tokens per second
PRIOR_OUTPUT = 200.0  # tokens in an answer
RECENT = 10.0  # seconds: an idle model used this lately is likely wanted again soon


@dataclass(frozen=True, slots=True)
class Estimate:
    wait: float  # for a slot, or for a busy model to finish so a load can evict it
    load: float
    prefill: float
    decode: float
    saved: float = 0.0  # prefill seconds this box's cache saves against a cold one
    evicts: str | None = None
    evicts_busy: bool = False
    penalty: float = 0.0  # reloading what the load evicts, later, elsewhere
    displaced: float = 0.0  # prefill another live conversation loses its cached slot for
    known: bool = False  # answers have been seen: the figures are learned, not priors

    @property
    def ttft(self) -> float:
        return self.wait + self.load + self.prefill

    @property
    def finish(self) -> float:
        return self.ttft + self.decode

    @property
    def score(self) -> float:
        return self.finish + self.penalty + self.displaced

    def describe(self) -> str:
        parts = [f"wait {self.wait:.2f}", f"load {self.load:.2f}", f"prefill {self.prefill:.2f}"]
        text = f"est ttft {self.ttft:.2f} s ({', '.join(parts)}), finish {self.finish:.2f} s"
        if self.evicts:
            text += f", evicts {self.evicts}" + (" (busy)" if self.evicts_busy else "")
        if self.displaced:
            text += f", displaces a cached conversation ({self.displaced:.2f} s)"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "ttft_s": round(self.ttft, 3),
            "finish_s": round(self.finish, 3),
            "wait_s": round(self.wait, 3),
            "load_s": round(self.load, 3),
            "prefill_s": round(self.prefill, 3),
            "decode_s": round(self.decode, 3),
            "evicts": self.evicts,
            "evicts_busy": self.evicts_busy,
            "penalty_s": round(self.penalty, 3),
            "displaced_s": round(self.displaced, 3),
            "learned": self.known,
        }


@dataclass(frozen=True, slots=True)
class Ask:
    """What the estimate needs of the request."""

    model: str
    prompt_tokens: int = 0
    affinity: str | None = None  # the box that served this conversation's last turn
    cached_tokens: int = 0  # that turn's prompt: what its box may hold


def estimate(
    box: BoxState,
    in_use: int,
    ask: Ask,
    fleet: Fleet,
    usage: Usage,
    learned: Learned,
    waiting: Mapping[str, int],
    queued: float,
    now: float,
) -> Estimate:
    """``queued``: this box's share of the requests for the model in the waiting room."""
    model, name = ask.model, box.name
    service = _service(learned, name, model, ask.prompt_tokens)
    wait = 0.0
    if in_use >= box.slots:
        wait = (in_use - box.slots + queued + 1) * service / (box.slots + 1)
    load, penalty, evicts, evicts_busy = 0.0, 0.0, None, False
    loaded = model in box.loaded
    if not loaded:
        full_load = learned.figure(learned.load, name, model) or PRIOR_LOAD
        load = full_load / 2 if in_use > 0 else full_load
        capacity = learned.capacity_of(name)
        if in_use == 0 and capacity is not None and len(box.loaded) >= capacity:
            idle = [m for m in box.loaded if not usage.get((name, m), 0) and not waiting.get(m, 0)]
            if idle:
                evicts = min(idle, key=lambda m: learned.last_used.get((name, m), -1e18))
                used = learned.last_used.get((name, evicts))
                elsewhere = any(evicts in b.loaded for b in fleet.boxes if b.name != name)
                if used is not None and now - used < RECENT and not elsewhere:
                    # The later its next use, the less its reload matters: fading over RECENT.
                    reload = learned.figure(learned.load, name, evicts) or PRIOR_LOAD
                    penalty = reload * (1.0 - (now - used) / RECENT)
            elif box.loaded:
                evicts_busy = True
                # Ollama loads once a resident model is idle: the soonest one to finish.
                evicts = min(box.loaded, key=lambda m: _service(learned, name, m, 0))
                wait += _service(learned, name, evicts, 0) / 2
    # The rates with this request among the model's running ones (slots allowing).
    sharing = min(in_use + 1, box.slots)
    rate = learned.rate(learned.prefill, learned.prefill_at, name, model, sharing) or PRIOR_PREFILL
    cached, displaced = 0, 0
    if loaded and name == ask.affinity and ask.cached_tokens:
        cached = min(ask.prompt_tokens, ask.cached_tokens)
    elif loaded:
        # Its prefix is not here: it takes the least recently used slot, and with it the
        # cache of whatever conversation that slot holds, if that one is still live.
        displaced = learned.caches.displaced(name, model, box.slots, now)
    prefill = (ask.prompt_tokens - cached) / rate
    speed = learned.rate(learned.decode, learned.decode_at, name, model, sharing)
    decode = _output(learned, model) / (speed or PRIOR_DECODE)
    return Estimate(
        wait,
        load,
        prefill,
        decode,
        saved=cached / rate,
        displaced=displaced / rate,
        evicts=evicts,
        evicts_busy=evicts_busy,
        penalty=penalty,
        known=learned.knows(),
    )


def _output(learned: Learned, model: str) -> float:
    own = learned.output.get(model)
    return own if own is not None else PRIOR_OUTPUT


def _service(learned: Learned, box: str, model: str, prompt: int) -> float:
    seen = learned.figure(learned.service, box, model)
    if seen is not None:
        return seen
    prefill = learned.figure(learned.prefill, box, model) or PRIOR_PREFILL
    decode = learned.figure(learned.decode, box, model) or PRIOR_DECODE
    return prompt / prefill + _output(learned, model) / decode
