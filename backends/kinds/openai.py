"""Boxes that speak OpenAI's API: the generic adapter (vLLM, LM Studio, hosted APIs) and
the probe that tells whether an Ollama box also serves its own ``/v1``.

A generic box lists its models at ``GET /v1/models`` and keeps what it serves in memory,
so every listed model counts as loaded. Its URL is the part before ``/v1``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson

from ollamux.backends.kinds import Adapter, LoadedList, ModelList, probe_headers
from ollamux.backends.translate.models import card, running_card
from ollamux.backends.upstream import Upstream
from ollamux.routing.errors import UpstreamBadAnswer, UpstreamError, UpstreamTimeout
from ollamux.routing.settings import Endpoint
from ollamux.routing.state import canonical_model


async def probe_get(up: Upstream, ep: Endpoint, path: str, timeout: float) -> tuple[int, Any]:
    """A probe's GET whose status matters (``/health`` says 503 while loading): the
    status and the JSON body (None when the body is not JSON)."""
    resp = await up.send(
        ep.name, "GET", ep.url + path, headers=probe_headers(ep), first_byte=timeout
    )
    try:
        async with asyncio.timeout(timeout):
            body = await resp.read()
    except TimeoutError as exc:
        raise UpstreamTimeout(f"box {ep.name}: {path} broke off", box=ep.name) from exc
    finally:
        resp.close()
    try:
        return resp.status, orjson.loads(body)
    except orjson.JSONDecodeError:
        return resp.status, None


async def model_entries(up: Upstream, ep: Endpoint, timeout: float) -> tuple[Any, list[Any]]:
    """``GET /v1/models``: the whole answer, and its ``data`` entries that have an id."""
    doc = await up.get_json(ep.name, f"{ep.url}/v1/models", probe_headers(ep), timeout)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise UpstreamBadAnswer(f"box {ep.name}: no model list at /v1/models", box=ep.name)
    return doc, [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]


def names(cards: tuple[dict[str, Any], ...]) -> frozenset[str]:
    return frozenset(canonical_model(c["name"]) for c in cards)


class OpenAIAdapter:
    async def list_models(self, up: Upstream, ep: Endpoint, timeout: float) -> ModelList:
        _, entries = await model_entries(up, ep, timeout)
        cards = tuple(card(e) for e in entries)
        return ModelList(names=names(cards), raw=cards)

    async def list_loaded(self, up: Upstream, ep: Endpoint, timeout: float) -> LoadedList:
        _, entries = await model_entries(up, ep, timeout)
        cards = tuple(card(e) for e in entries)
        return LoadedList(names(cards), tuple(running_card(c) for c in cards))


class WithOpenAIProbe:
    """An Ollama box's adapter that also asks, with each model list, whether the box
    serves its own ``/v1`` (then OpenAI clients reach it bytes through)."""

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner

    async def list_models(self, up: Upstream, ep: Endpoint, timeout: float) -> ModelList:
        listed = await self._inner.list_models(up, ep, timeout)
        try:
            status, doc = await probe_get(up, ep, "/v1/models", timeout)
        except UpstreamError:
            return listed
        serves = status == 200 and isinstance(doc, dict) and isinstance(doc.get("data"), list)
        return replace(listed, openai_api=serves)

    async def list_loaded(self, up: Upstream, ep: Endpoint, timeout: float) -> LoadedList:
        return await self._inner.list_loaded(up, ep, timeout)
