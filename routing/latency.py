"""Observed speed per (box, model): moving averages of time to first byte and decode rate.

``expected()`` turns them into seconds for a typical answer, which the default strategy
uses to prefer the faster of otherwise equal boxes and ``latency`` ranks by. Only what
ollamux itself saw counts: the box's time to answer after the request was sent (not time
spent in the waiting room) and the decode rate the box reported in its final chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

ALPHA = 0.2  # weight of the newest observation
TYPICAL_TOKENS = 128  # the answer length "expected seconds" is quoted for


class Speeds:
    def __init__(self) -> None:
        self._ttft: dict[tuple[str, str], float] = {}
        self._rate: dict[tuple[str, str], float] = {}
        self._expected: dict[tuple[str, str], float] = {}
        self.view: Mapping[tuple[str, str], float] = MappingProxyType(self._expected)

    def observe(self, box: str, model: str, ttft: float | None, rate: float | None) -> None:
        key = (box, model)
        if ttft is not None and ttft >= 0:
            self._ttft[key] = _ewma(self._ttft.get(key), ttft)
        if rate is not None and rate > 0:
            self._rate[key] = _ewma(self._rate.get(key), rate)
        if key in self._ttft or key in self._rate:
            rate_now = self._rate.get(key)
            decode = TYPICAL_TOKENS / rate_now if rate_now else 0.0
            self._expected[key] = self._ttft.get(key, 0.0) + decode

    def describe(self, box: str, model: str) -> dict[str, float | None]:
        key = (box, model)
        return {
            "ttft_s": _round(self._ttft.get(key)),
            "decode_tokens_per_s": _round(self._rate.get(key)),
            "expected_s": _round(self._expected.get(key)),
        }


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + ALPHA * (new - old)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
