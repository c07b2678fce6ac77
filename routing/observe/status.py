"""The status snapshot: the one picture of the fleet that /router/status, the live feed
and the dashboard read. Built from immutable probe state and a copy of the usage counts,
outside the routing lock, so a slow reader never slows routing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ollamux.routing.state import BoxState, Fleet, Usage, canonical_model


class StatusBoard:
    """Knows when the picture changed (a version number), and draws it on demand."""

    def __init__(
        self,
        fleet: Callable[[], Fleet],
        usage: Callable[[], Usage],
        queue: Callable[[], dict[str, Any]] = lambda: {"waiting": 0},
    ) -> None:
        self._fleet = fleet
        self._usage = usage
        self._queue = queue
        self.version = 0
        self.requests = 0
        self.errors = 0
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self.version += 1
        self._changed.set()

    async def wait_change(self, seen: int) -> int:
        """Wait until the version moves past ``seen``; return the new version."""
        while self.version == seen:
            self._changed.clear()
            await self._changed.wait()
        return self.version

    def snapshot(self) -> dict[str, Any]:
        usage = dict(self._usage())
        endpoints = [_endpoint(box, usage) for box in self._fleet().boxes]
        return {
            "endpoints": endpoints,
            "queue": self._queue(),
            "totals": {
                "requests": self.requests,
                "errors": self.errors,
                "in_flight": sum(usage.values()),
            },
        }


def _endpoint(box: BoxState, usage: dict[tuple[str, str], int]) -> dict[str, Any]:
    names = box.models | box.loaded | {m for (b, m) in usage if b == box.name}
    running = {canonical_model(e["name"]): e for e in box.running if isinstance(e.get("name"), str)}
    models = [
        {
            "name": name,
            "loaded": name in box.loaded,
            "in_use": usage.get((box.name, name), 0),
            "max": box.slots,
            **_memory(running.get(name)),
        }
        for name in sorted(names, key=lambda n: (n not in box.loaded, n))
    ]
    return {
        "name": box.name,
        "url": _public_url(box.url),
        "kind": box.kind,
        "health": str(box.health),
        "breaker": str(box.breaker),
        "failing": sorted(box.failing),  # models whose (box, model) breaker is open
        "draining": box.draining,
        "version": box.version,
        "error": box.error,
        "models": models,
    }


def _memory(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """A loaded model's footprint and unload time, as the box's /api/ps gave them."""
    if entry is None:
        return {}
    keys = ("size", "size_vram", "expires_at")
    return {k: entry[k] for k in keys if isinstance(entry.get(k), int | str)}


def _public_url(url: str) -> str:
    """Credentials written into a box URL never leave the process."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
