"""Token counts and timings of one exchange, read once from the end of its body.

The relay keeps the last bytes of every response (``Outcome.tail``); the figures a box
reports sit in its final chunk: Ollama's ``prompt_eval_count``, ``eval_count``,
``eval_duration``, ``load_duration`` (nanoseconds), OpenAI's ``usage`` (chat
completions' ``prompt_tokens``, the Responses API's ``input_tokens``), Anthropic's
``usage`` (``input_tokens``, ``output_tokens``; for Anthropic streams the relay also
keeps the first event, whose ``message_start`` says the prompt's size where the last
does not) and llama-server's ``timings`` (milliseconds). Nothing here touches the
stream on its way to the client.

The tail is searched for known keys rather than parsed as JSON: a long non-streamed
answer is cut at the front, and a stream's tail holds one or two whole chunks. A key
written as ``{"eval_count":`` or ``,"eval_count":`` can only be a key: inside a JSON
string every quote is escaped, so a model that writes ``"eval_count"`` in its answer is
not mistaken for a count. The last occurrence wins, which is the final chunk's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = rb"(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
_KEYS = (
    # Ollama (durations in nanoseconds)
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
    "load_duration",
    "total_duration",
    # OpenAI usage
    "prompt_tokens",
    "completion_tokens",
    # the Responses API's usage (response.completed) and Anthropic's (message_delta)
    "input_tokens",
    "output_tokens",
    # llama-server timings (durations in milliseconds)
    "prompt_n",
    "prompt_ms",
    "predicted_n",
    "predicted_ms",
)
_FIELD = re.compile(rb'[{,]\s*"(' + "|".join(_KEYS).encode() + rb')"\s*:\s*' + _NUMBER)


@dataclass(frozen=True, slots=True)
class Counts:
    """What a box said one request cost. Durations are None when the box did not say."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    prompt_seconds: float | None = None
    decode_seconds: float | None = None  # time spent generating the output tokens
    load_seconds: float | None = None
    total_seconds: float | None = None  # the box's own time for the whole request

    @property
    def decode_rate(self) -> float | None:
        """Output tokens per second while decoding, as the box measured it."""
        if self.output_tokens and self.decode_seconds:
            return self.output_tokens / self.decode_seconds
        return None


NOTHING = Counts()


def read_counts(tail: bytes) -> Counts:
    """The figures in the final chunk of a response body (or its last bytes)."""
    found: dict[str, float] = {}
    for match in _FIELD.finditer(tail):
        found[match.group(1).decode()] = float(match.group(2))
    if not found:
        return NOTHING
    if "eval_count" in found or "prompt_eval_count" in found:
        return Counts(
            prompt_tokens=_count(found.get("prompt_eval_count")),
            output_tokens=_count(found.get("eval_count")),
            prompt_seconds=_scaled(found.get("prompt_eval_duration"), 1e-9),
            decode_seconds=_scaled(found.get("eval_duration"), 1e-9),
            load_seconds=_scaled(found.get("load_duration"), 1e-9),
            total_seconds=_scaled(found.get("total_duration"), 1e-9),
        )
    prompt = found.get("prompt_tokens", found.get("prompt_n", found.get("input_tokens")))
    output = found.get("completion_tokens", found.get("predicted_n", found.get("output_tokens")))
    prompt_seconds = _scaled(found.get("prompt_ms"), 1e-3)
    decode_seconds = _scaled(found.get("predicted_ms"), 1e-3)
    total = None
    if prompt_seconds is not None and decode_seconds is not None:
        total = prompt_seconds + decode_seconds
    return Counts(
        prompt_tokens=_count(prompt),
        output_tokens=_count(output),
        prompt_seconds=prompt_seconds,
        decode_seconds=decode_seconds,
        total_seconds=total,
    )


def _count(value: float | None) -> int:
    return int(value) if value is not None and value > 0 else 0


def _scaled(value: float | None, unit: float) -> float | None:
    return value * unit if value is not None and value > 0 else None
