"""``GET /router/events``: the status snapshot as Server-Sent Events.

Events (``event:`` name, ``data:`` one JSON object):

- ``snapshot``: the status contract (README), one at once on connect, then on every
  change, at most one per ``min_gap`` seconds. Its ``id`` is the board's version: a gap
  in ids means snapshots were coalesced or skipped for this subscriber.
- ``stats``: rates, charts, recent requests and tuning figures (``Stats.view``), one on
  connect (built then, unless one was built less than ``min_gap`` ago), then every
  ``stats_every`` seconds.
- a comment line every ``heartbeat`` seconds, so idle proxies keep the stream open.

One publisher builds and encodes each event once, outside the routing lock, for every
subscriber. A subscriber's buffer is one slot per event name that always holds the
latest event: a subscriber that stops reading holds up nobody, and when it reads again
it gets the newest snapshot, not the backlog. Routing only bumps a version number.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from ollamux.routing.observe.status import Snapshot, StatusBoard

RETRY_MS = 2000  # how soon a browser reconnects after the stream breaks


@dataclass
class Subscriber:
    seen: dict[str, int] = field(default_factory=dict)  # event name -> last id sent
    sent: int = 0


class Feed:
    def __init__(
        self,
        board: StatusBoard,
        stats: Callable[[Snapshot], Mapping[str, Any]],
        *,
        min_gap: float = 0.25,
        heartbeat: float = 15.0,
        stats_every: float = 2.0,
    ) -> None:
        self.min_gap = min_gap
        self.heartbeat = heartbeat
        self.stats_every = stats_every
        self._board = board
        self._stats = stats
        self._latest: dict[str, tuple[int, bytes]] = {}  # event name -> (id, encoded)
        self._stats_id = 0
        self._stats_at = -float("inf")  # loop time of the last stats published
        self._wake = asyncio.Event()
        self.subscribers: list[Subscriber] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._snapshots()),
            asyncio.create_task(self._stats_loop()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def version(self, name: str) -> int:
        return self._latest.get(name, (-1, b""))[0]

    # -- publishing -------------------------------------------------------------------

    def publish_snapshot(self) -> Snapshot:
        version = self._board.version
        snapshot = self._board.snapshot()
        self._set("snapshot", version, snapshot)
        return snapshot

    def publish_stats(self, snapshot: Snapshot | None = None) -> None:
        self._stats_at = asyncio.get_running_loop().time()
        self._stats_id += 1
        self._set("stats", self._stats_id, self._stats(snapshot or self._board.snapshot()))

    def _set(self, name: str, ident: int, data: Mapping[str, Any]) -> None:
        encoded = (
            f"id: {ident}\r\nevent: {name}\r\nretry: {RETRY_MS}\r\ndata: ".encode()
            + orjson.dumps(data)
            + b"\r\n\r\n"
        )
        self._latest[name] = (ident, encoded)
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def _snapshots(self) -> None:
        seen = self._board.version
        while True:
            seen = await self._board.wait_change(seen)
            if self.subscribers:  # nobody watching: nothing to draw
                self.publish_snapshot()
            await asyncio.sleep(self.min_gap)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_every)
            if self.subscribers:
                self.publish_stats()

    # -- subscribing ------------------------------------------------------------------

    async def events(self) -> AsyncIterator[bytes]:
        """One subscriber's stream: the latest of each event, whenever it can take it."""
        me = Subscriber()
        self.subscribers.append(me)
        try:
            if self.version("snapshot") != self._board.version:
                self.publish_snapshot()
            # The cached stats may be from when the last viewer left, long ago: a new
            # viewer sees them as they are now (rebuilt at most once per min_gap).
            if asyncio.get_running_loop().time() - self._stats_at >= self.min_gap:
                self.publish_stats()
            while True:
                wake = self._wake  # set by any publish from here on, even during a yield
                for name, (ident, encoded) in list(self._latest.items()):
                    if me.seen.get(name) != ident:
                        me.seen[name] = ident
                        yield encoded
                        me.sent += 1
                await wake.wait()
        finally:
            self.subscribers.remove(me)


async def events_endpoint(request: Request) -> Response:
    feed: Feed = request.app.state.services.feed
    return EventSourceResponse(feed.events(), ping=feed.heartbeat)
