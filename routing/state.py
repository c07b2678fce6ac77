"""What the proxy knows about its boxes: immutable values, replaced whole on change.

The prober publishes a new ``Fleet`` when a probe changes something; routing reads the
current one without locks because nothing in it ever mutates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from ollamux.routing.breaker import BreakerState
from ollamux.routing.settings import Kind


class Health(StrEnum):
    UNKNOWN = "unknown"  # not probed yet
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # answers, but a probe failed lately
    DOWN = "down"  # unreachable: no traffic until a probe succeeds


def canonical_model(name: str) -> str:
    """Ollama treats ``llama3`` and ``llama3:latest`` as one model; so do we."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def version_key(version: str | None) -> tuple[int, ...]:
    """A box's version, comparable: ``0.13.3``, ``v0.13.3-rc1`` -> (0, 13, 3); parts that
    are not numbers count 0; no version is ()."""
    if not version:
        return ()
    parts = version.removeprefix("v").split("-")[0].split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in parts)


def model_key(name: str, aliases: Mapping[str, str]) -> str:
    """The one routing key of a model: the config's alias for it (``aliases`` is keyed by
    canonical names), else its canonical name."""
    return canonical_model(aliases.get(canonical_model(name), name))


_GLOB = frozenset("*?[")


def split_aliases(
    pairs: Iterable[tuple[str, str]],
) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """The config's ``aliases``: exact names (a box's own id -> the model it is the same
    as, keyed by canonical name) and glob patterns (``claude-*``), in config order."""
    exact = {canonical_model(own): name for own, name in pairs if not _GLOB & set(own)}
    patterns = tuple((own, name) for own, name in pairs if _GLOB & set(own))
    return exact, patterns


def pattern_alias(name: str, patterns: Iterable[tuple[str, str]]) -> str | None:
    """The model the first matching pattern maps ``name`` to, if any."""
    for pattern, target in patterns:
        if fnmatchcase(name, pattern) or fnmatchcase(canonical_model(name), pattern):
            return target
    return None


@dataclass(frozen=True, slots=True)
class BoxState:
    name: str
    url: str
    kind: Kind
    index: int  # position in the config file
    priority: int
    slots: int  # request slots per model on this box
    health: Health = Health.UNKNOWN
    models: frozenset[str] = frozenset()  # canonical names the box advertises
    loaded: frozenset[str] = frozenset()  # canonical names loaded in memory now
    version: str | None = None
    error: str | None = None  # the last probe failure, for people
    tags: tuple[Mapping[str, Any], ...] = ()  # raw /api/tags entries, for merging
    running: tuple[Mapping[str, Any], ...] = ()  # raw /api/ps entries, for merging
    breaker: BreakerState = BreakerState.CLOSED
    weight: float = 1.0  # share of traffic under the weighted-random strategy
    draining: bool = False  # no new requests (maintenance, or removed from the config)
    openai_api: bool | None = None  # an Ollama box also serves OpenAI's /v1 (None: unknown)
    answered: bool = False  # it has answered a probe as a box of its kind since configured

    @property
    def reachable(self) -> bool:
        """It answers its probes now (whatever its breaker or draining say)."""
        return self.health in (Health.HEALTHY, Health.DEGRADED)

    # Routes the box answered 404 on where their translation worked (``/v1/responses`` on
    # an older server): they are translated for it until its version changes.
    lacking: frozenset[str] = frozenset()
    # Cloud models: listed with ``remote_host`` (Ollama forwards them to a remote host),
    # read from the model list when it is probed.
    remote: frozenset[str] = frozenset()
    failing: frozenset[str] = frozenset()  # models whose (box, model) breaker is open

    @property
    def routable(self) -> bool:
        healthy = self.health in (Health.HEALTHY, Health.DEGRADED)
        return healthy and self.breaker is not BreakerState.OPEN and not self.draining


@dataclass(frozen=True, slots=True)
class Fleet:
    boxes: tuple[BoxState, ...] = ()
    by_name: Mapping[str, BoxState] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, boxes: tuple[BoxState, ...]) -> Fleet:
        return cls(boxes, MappingProxyType({b.name: b for b in boxes}))

    def replace(self, box: BoxState) -> Fleet:
        return Fleet.of(tuple(box if b.name == box.name else b for b in self.boxes))

    def knows(self, model: str) -> bool:
        return any(model in b.models for b in self.boxes)

    def remote(self, model: str) -> bool:
        """A cloud model: every box that lists it forwards it to a remote host, so it
        uses no local capacity."""
        having = [b for b in self.boxes if model in b.models]
        return bool(having) and all(model in b.remote for b in having)


# Slots in use, keyed by (box name, canonical model); owned by the ledger.
Usage = Mapping[tuple[str, str], int]
