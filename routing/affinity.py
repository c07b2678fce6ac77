"""Conversation affinity: the next turn of a conversation goes back to the box that holds
its prompt prefix in cache.

The key is the client's ``X-Session-Id`` when it sends one, else a hash of what stays the
same from turn to turn: the model, the system prompt and the first user message (for
``/api/generate``: the system prompt and the start of the prompt). The table is a bounded
LRU whose entries expire ``ttl`` seconds after their last use.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import orjson

PROMPT_PREFIX = 512  # characters of a generate prompt that identify its conversation


def conversation_key(model: str, doc: dict[str, Any], session: str | None) -> str | None:
    if session:
        material: object = ("session", model, session)
    elif isinstance(messages := doc.get("messages"), list):
        first_user = _first(messages, "user")
        if first_user is None:
            return None
        material = (model, _first(messages, "system"), first_user)
    elif isinstance(prompt := doc.get("prompt"), str) and prompt:
        material = (model, doc.get("system"), prompt[:PROMPT_PREFIX])
    else:
        return None
    return hashlib.blake2b(orjson.dumps(material), digest_size=16).hexdigest()


def _first(messages: list[Any], role: str) -> Any:
    for message in messages:
        if isinstance(message, dict) and message.get("role") == role:
            return message.get("content")
    return None


class AffinityTable:
    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def resize(self, ttl: float, max_entries: int) -> None:
        self._ttl, self._max = ttl, max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        box, expires = entry
        if expires <= now:
            del self._entries[key]
            return None
        return box

    def put(self, key: str, box: str, now: float) -> None:
        self._entries[key] = (box, now + self._ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
