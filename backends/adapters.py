"""One adapter per box kind, behind one interface; the kind comes from the config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from backends.settings import Endpoint, Kind
from backends.upstream import Upstream


@dataclass(frozen=True, slots=True)
class ModelList:
    names: frozenset[str]
    raw: tuple[Mapping[str, Any], ...] = ()
    version: str | None = None
    slots: int | None = None  # the box's own slot count, when it says (llama-server)


@dataclass(frozen=True, slots=True)
class LoadedList:
    names: frozenset[str]
    raw: tuple[Mapping[str, Any], ...] = field(default=())


class Adapter(Protocol):
    async def list_models(self, up: Upstream, ep: Endpoint, timeout: float) -> ModelList: ...

    async def list_loaded(self, up: Upstream, ep: Endpoint, timeout: float) -> LoadedList: ...


def probe_headers(ep: Endpoint) -> dict[str, str]:
    return {"authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}


def adapters() -> Mapping[Kind, Adapter]:
    from backends.ollama import OllamaAdapter

    return {"ollama": OllamaAdapter()}
