"""llama.cpp's ``llama-server`` boxes.

- Models: ``GET /v1/models``. A single-model server lists one; in router mode (started
  without a model) every entry carries ``status.value``: loaded, loading, unloaded,
  sleeping. Its Ollama-like ``models`` twin, when present, fills the tags card.
- Loaded: ``GET /health`` (503 while the model loads: the box is degraded until it
  answers 200), then the entries whose status is ``loaded``; a single-model server's
  model counts as loaded once healthy.
- Slots: ``total_slots`` of ``GET /props`` (its ``--parallel``), else the length of
  ``GET /slots``; in router mode both are asked of a loaded model, without loading one.
  The prober uses them as the box's slot count unless the config sets ``max_concurrent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ollamux.backends.kinds import LoadedList, ModelList
from ollamux.backends.kinds.openai import model_entries, names, probe_get
from ollamux.backends.translate.models import card, running_card
from ollamux.backends.upstream import Upstream
from ollamux.routing.errors import UpstreamBadAnswer
from ollamux.routing.settings import Endpoint


class LlamaServerAdapter:
    async def list_models(self, up: Upstream, ep: Endpoint, timeout: float) -> ModelList:
        await _ready(up, ep, timeout)
        doc, entries = await model_entries(up, ep, timeout)
        cards = _cards(doc, entries)
        router = any(isinstance(e.get("status"), dict) for e in entries)
        loaded = [e["id"] for e in entries if _loaded(e)]
        query = f"?model={quote(loaded[0], safe='')}&autoload=false" if router and loaded else ""
        slots, version = await _props(up, ep, query, timeout)
        return ModelList(names=names(cards), raw=cards, version=version, slots=slots)

    async def list_loaded(self, up: Upstream, ep: Endpoint, timeout: float) -> LoadedList:
        await _ready(up, ep, timeout)
        doc, entries = await model_entries(up, ep, timeout)
        cards = _cards(doc, [e for e in entries if _loaded(e)])
        return LoadedList(names(cards), tuple(running_card(c) for c in cards))


async def _ready(up: Upstream, ep: Endpoint, timeout: float) -> None:
    """``/health`` first: while a model loads, every other route answers 503 too."""
    status, health = await probe_get(up, ep, "/health", timeout)
    if status >= 300:
        reason = _why(health) if health is not None else f"status {status}"
        raise UpstreamBadAnswer(f"box {ep.name}: /health says {reason}", box=ep.name, status=status)


def _cards(doc: Mapping[str, Any], entries: list[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    twins = doc.get("models")
    by_id = {
        m.get("model") or m.get("name"): m
        for m in (twins if isinstance(twins, list) else [])
        if isinstance(m, dict)
    }
    return tuple(card(e, by_id.get(e["id"])) for e in entries)


def _loaded(entry: Mapping[str, Any]) -> bool:
    status = entry.get("status")
    return not isinstance(status, dict) or status.get("value") == "loaded"


async def _props(
    up: Upstream, ep: Endpoint, query: str, timeout: float
) -> tuple[int | None, str | None]:
    status, props = await probe_get(up, ep, "/props" + query, timeout)
    props = props if status == 200 and isinstance(props, dict) else {}
    version = props.get("build_info")
    slots = props.get("total_slots")
    if not _count(slots):
        status, listed = await probe_get(up, ep, "/slots" + query, timeout)
        slots = len(listed) if status == 200 and isinstance(listed, list) else None
    return (slots if _count(slots) else None), (version if isinstance(version, str) else None)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _why(health: Any) -> str:
    if isinstance(health, dict):
        error = health.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(health.get("status"), str):
            return str(health["status"])
    return "not ready"
