"""One adapter per box kind, behind one interface; the kind comes from the config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ollamux.backends.upstream import Upstream
from ollamux.routing.settings import Endpoint, Kind
from ollamux.routing.state import canonical_model


@dataclass(frozen=True, slots=True)
class ModelList:
    names: frozenset[str]
    raw: tuple[Mapping[str, Any], ...] = ()
    version: str | None = None
    slots: int | None = None  # the box's own slot count, when it says (llama-server)
    openai_api: bool | None = None  # an Ollama box also serves OpenAI's /v1


@dataclass(frozen=True, slots=True)
class LoadedList:
    names: frozenset[str]
    raw: tuple[Mapping[str, Any], ...] = field(default=())


class Adapter(Protocol):
    async def list_models(self, up: Upstream, ep: Endpoint, timeout: float) -> ModelList: ...

    async def list_loaded(self, up: Upstream, ep: Endpoint, timeout: float) -> LoadedList: ...


def probe_headers(ep: Endpoint) -> dict[str, str]:
    return {"authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}


def adapters(aliases: Mapping[str, str] | None = None) -> Mapping[Kind, Adapter]:
    """One adapter per kind; ``aliases`` (canonical own id -> name) renames listed models."""
    from ollamux.backends.kinds.llama_server import LlamaServerAdapter
    from ollamux.backends.kinds.ollama import OllamaAdapter
    from ollamux.backends.kinds.openai import OpenAIAdapter, WithOpenAIProbe

    kinds: dict[Kind, Adapter] = {
        "ollama": WithOpenAIProbe(OllamaAdapter()),
        "llama-server": LlamaServerAdapter(),
        "openai": OpenAIAdapter(),
    }
    if not aliases:
        return kinds
    return {kind: Aliased(adapter, aliases) for kind, adapter in kinds.items()}


class Aliased:
    """Lists a box's models under the names the config's alias map gives them. Each raw
    entry keeps the box's own id in ``model``: requests sent to the box use that id."""

    def __init__(self, inner: Adapter, aliases: Mapping[str, str]) -> None:
        self._inner = inner
        self._aliases = aliases

    async def list_models(self, up: Upstream, ep: Endpoint, timeout: float) -> ModelList:
        listed = await self._inner.list_models(up, ep, timeout)
        raw = tuple(self._rename(e) for e in listed.raw)
        return replace(listed, names=frozenset(canonical_model(e["name"]) for e in raw), raw=raw)

    async def list_loaded(self, up: Upstream, ep: Endpoint, timeout: float) -> LoadedList:
        loaded = await self._inner.list_loaded(up, ep, timeout)
        raw = tuple(self._rename(e) for e in loaded.raw)
        return LoadedList(frozenset(canonical_model(e["name"]) for e in raw), raw)

    def _rename(self, entry: Mapping[str, Any]) -> Mapping[str, Any]:
        own = entry.get("model") or entry["name"]
        name = self._aliases.get(canonical_model(own))
        return entry if name is None else {**entry, "name": name, "model": own}
