"""What outlives the event that announced it: a conversation's box and a box's 429
cool-down are also kept in Redis, with their own expiry, so a replica that starts (or
restarts) later learns them instead of only what is announced after it joined.

Keys: ``{prefix}:aff:{conversation}`` (the box, expiring with ``affinity.ttl``) and
``{prefix}:cool:{box}`` (expiring when the cool-down ends).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

SCAN_BATCH = 500


def keep(pipe: Pipeline, prefix: str, event: dict[str, Any]) -> None:
    """Queue the write that keeps ``event`` (if it is one worth keeping) on ``pipe``."""
    kind = event.get("e")
    if kind == "aff":
        ttl_ms = max(1, int(float(event.get("t", 0)) * 1000))
        pipe.set(f"{prefix}:aff:{event['k']}", str(event["b"]), px=ttl_ms)
    elif kind == "429":
        ttl_ms = max(1, int(float(event["s"]) * 1000))
        pipe.set(f"{prefix}:cool:{event['b']}", "1", px=ttl_ms)


async def recall(client: aioredis.Redis, prefix: str, limit: int) -> list[dict[str, Any]]:
    """The kept events, as the events that announced them (cool-downs with the time
    left): at most ``limit`` conversations."""
    events: list[dict[str, Any]] = []
    names: list[bytes] = []
    async for name in client.scan_iter(match=f"{prefix}:aff:*", count=SCAN_BATCH):
        names.append(name)
        if len(names) >= limit:
            break
    skip = len(f"{prefix}:aff:")
    for start in range(0, len(names), SCAN_BATCH):
        batch = names[start : start + SCAN_BATCH]
        for name, box in zip(batch, await client.mget(batch), strict=True):
            if isinstance(box, bytes):
                events.append({"e": "aff", "k": name.decode()[skip:], "b": box.decode()})
    skip = len(f"{prefix}:cool:")
    async for name in client.scan_iter(match=f"{prefix}:cool:*", count=SCAN_BATCH):
        left = await client.pttl(name)
        if left > 0:
            events.append({"e": "429", "b": name.decode()[skip:], "s": left / 1000})
    return events
