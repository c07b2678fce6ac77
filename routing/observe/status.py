"""The status snapshot: the one picture of the fleet that /router/status, the live feed
and the dashboard read. Built from immutable probe state and a copy of the usage counts,
outside the routing lock, so a slow reader never slows routing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol, TypedDict, cast
from urllib.parse import urlsplit, urlunsplit

from ollamux.routing.dispatch import QueueStatus
from ollamux.routing.state import BoxState, Fleet, Usage, canonical_model


class Memory(TypedDict, total=False):
    """A loaded model's footprint and unload time, as the box's /api/ps gave them."""

    size: int  # bytes
    size_vram: int
    expires_at: str
    remote: bool  # a cloud model the box forwards to a remote host: it takes no slot


class ModelStatus(Memory):
    name: str
    available: bool  # its box answers its probes now; false: known, but the box is down
    loaded: bool
    in_use: int
    max: int


class EndpointStatus(TypedDict):
    name: str
    url: str  # credentials removed
    kind: str
    health: str  # healthy | degraded | down | unknown
    breaker: str
    draining: bool
    version: str | None
    error: str | None
    lacking: list[str]  # routes it answered 404 on, translated for it since
    failing: list[str]  # models whose own breaker is open on this box
    models: list[ModelStatus]


class Totals(TypedDict):
    requests: int
    errors: int
    in_flight: int


class SharedStatus(TypedDict):
    backend: str  # memory | redis
    healthy: bool  # False: Redis unreachable, this replica serves on its own share
    replica: str | None  # this replica's name in the registry


class ReplicaStatus(TypedDict):
    name: str
    address: str
    last_seen: float | None  # seconds ago, by Redis's clock
    leases: int  # slots it holds
    waiting: int  # its requests waiting


class Snapshot(TypedDict):
    """GET /router/status and the live feed's ``snapshot`` event (the README's status contract)."""

    endpoints: list[EndpointStatus]
    queue: QueueStatus
    totals: Totals
    shared_state: SharedStatus
    replicas: list[ReplicaStatus]


class FleetView(Protocol):
    @property
    def fleet(self) -> Fleet: ...


class UsageView(Protocol):
    @property
    def usage(self) -> Usage: ...


class QueueView(Protocol):
    def queue_status(self) -> QueueStatus: ...


class SharedView(Protocol):
    """Replicas sharing one fleet (backends/shared_state): who they are, how it goes."""

    def status(self) -> Any: ...

    def replicas(self) -> Any: ...


class Counted(Protocol):
    def lifetime_requests(self) -> tuple[int, int]:
        """Requests and failed requests since the first start (stats)."""
        ...


class StatusBoard:
    """Knows when the picture changed (a version number), and draws it on demand from
    the parts that own each fact: the fleet, the slots, the waiting room, the totals."""

    def __init__(
        self,
        fleet: FleetView,
        slots: UsageView,
        queue: QueueView,
        counted: Counted,
        shared: SharedView | None = None,
    ) -> None:
        self._shared = shared
        self._fleet = fleet
        self._slots = slots
        self._queue = queue
        self._counted = counted
        self.version = 0
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

    def snapshot(self) -> Snapshot:
        usage = dict(self._slots.usage)
        requests, errors = self._counted.lifetime_requests()
        return {
            "endpoints": [_endpoint(box, usage) for box in self._fleet.fleet.boxes],
            "queue": self._queue.queue_status(),
            "totals": {"requests": requests, "errors": errors, "in_flight": sum(usage.values())},
            "shared_state": self._shared_status(),
            "replicas": [] if self._shared is None else self._shared.replicas(),
        }

    def _shared_status(self) -> SharedStatus:
        if self._shared is None:
            return {"backend": "memory", "healthy": True, "replica": None}
        status: SharedStatus = self._shared.status()
        return status


def _endpoint(box: BoxState, usage: dict[tuple[str, str], int]) -> EndpointStatus:
    names = box.models | box.loaded | {m for (b, m) in usage if b == box.name}
    running = {canonical_model(e["name"]): e for e in box.running if isinstance(e.get("name"), str)}
    models: list[ModelStatus] = [
        {
            "name": name,
            "available": box.reachable,
            "loaded": name in box.loaded,
            "in_use": usage.get((box.name, name), 0),
            "max": box.slots,
            **_memory(running.get(name), remote=name in box.remote),
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
        "lacking": sorted(box.lacking),  # routes it answered 404 on: translated for it
        "models": models,
    }


def _memory(entry: Mapping[str, Any] | None, *, remote: bool) -> Memory:
    keys = ("size", "size_vram", "expires_at")
    found = {k: entry[k] for k in keys if isinstance(entry.get(k), int | str)} if entry else {}
    memory = cast(Memory, found)
    if remote:
        memory["remote"] = True
    return memory


def _public_url(url: str) -> str:
    """Credentials written into a box URL never leave the process."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
