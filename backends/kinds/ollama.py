"""Ollama boxes: models from ``/api/tags``, loaded models from ``/api/ps``."""

from __future__ import annotations

from typing import Any

from ollamux.backends.kinds import LoadedList, ModelList, probe_headers
from ollamux.backends.upstream import Upstream
from ollamux.routing.errors import UpstreamBadAnswer
from ollamux.routing.settings import Endpoint
from ollamux.routing.state import canonical_model


class OllamaAdapter:
    async def list_models(self, up: Upstream, ep: Endpoint, timeout: float) -> ModelList:
        headers = probe_headers(ep)
        tags = await up.get_json(ep.name, f"{ep.url}/api/tags", headers, timeout)
        entries = _entries(tags, ep)
        try:
            version = await up.get_json(ep.name, f"{ep.url}/api/version", headers, timeout)
        except UpstreamBadAnswer:
            version = {}
        return ModelList(
            names=frozenset(_names(entries)),
            raw=tuple(entries),
            version=version.get("version") if isinstance(version, dict) else None,
        )

    async def list_loaded(self, up: Upstream, ep: Endpoint, timeout: float) -> LoadedList:
        ps = await up.get_json(ep.name, f"{ep.url}/api/ps", probe_headers(ep), timeout)
        entries = _entries(ps, ep)
        return LoadedList(names=frozenset(_names(entries)), raw=tuple(entries))


def _entries(body: Any, ep: Endpoint) -> list[dict[str, Any]]:
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise UpstreamBadAnswer(f"box {ep.name}: no model list in its answer", box=ep.name)
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)]


def _names(entries: list[dict[str, Any]]) -> list[str]:
    return [canonical_model(m["name"]) for m in entries]
