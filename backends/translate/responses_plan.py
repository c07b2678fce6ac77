"""How a ``/v1/responses`` request reaches each box.

A box that serves the Responses API gets the client's bytes (its stream reaches the
client unchanged): an Ollama box from 0.13.3 on, as its version says. A box that does not
gets a translation: an older Ollama box a chat on its native ``/api/chat`` (Responses ->
chat completions -> Ollama, and its answer back the same way), an OpenAI-compatible
server a chat completion. Where the version says nothing (llama-server, whose recent
builds serve the route, and other OpenAI-compatible servers) the bytes go first, with the
translation as the fallback: a 404 from the box on ``/v1/responses`` is not a failure,
the same slot on the same box takes the translation, and the box is remembered as
lacking the route (``BoxState.lacking``) until its version changes.
"""

from __future__ import annotations

from typing import Any

import orjson

from ollamux.backends.relay import Outbound, Translator
from ollamux.backends.translate import openai_client as to_ollama
from ollamux.backends.translate import responses as rsp
from ollamux.backends.translate.models import own_id
from ollamux.backends.translate.plans import Routed, with_model
from ollamux.backends.translate.responses_stream import ChatToResponses
from ollamux.routing.errors import BadRequest
from ollamux.routing.state import BoxState, version_key

RESPONSES = "/v1/responses"
CHAT = "/v1/chat/completions"
OLLAMA_SINCE = (0, 13, 3)  # Ollama's first release with /v1/responses


def serves_responses(box: BoxState) -> bool | None:
    """Whether ``box`` serves ``/v1/responses`` itself; None: not known until tried."""
    if RESPONSES in box.lacking:
        return False
    if box.kind == "ollama" and box.version:
        known = version_key(box.version)
        # 0.0.0 is a build from source: its version says nothing, so it is tried.
        return None if not any(known) else known >= OLLAMA_SINCE
    return None


def for_responses_client(
    path: str, body: bytes, doc: dict[str, Any], model: str, key: str
) -> Routed:
    """Bytes where the box speaks Responses, a translation where it does not; a request
    no translation can carry (a built-in tool, say) goes only to boxes that may speak it."""
    stream = doc.get("stream") is True
    variants: dict[bool, dict[str, Any] | BadRequest] = {}
    for ollama in (True, False):
        try:
            chat = rsp.chat_request(doc, ollama=ollama)
            variants[ollama] = to_ollama.chat_request(chat) if ollama else chat
        except BadRequest as exc:
            variants[ollama] = exc

    def same(box: BoxState) -> Outbound:
        return Outbound(path, with_model(body, doc, own_id(box, key, model), model))

    def translated(box: BoxState) -> Outbound | None:
        variant = variants[box.kind == "ollama"]
        if isinstance(variant, BadRequest):
            return None
        sent = orjson.dumps({**variant, "model": own_id(box, key, model)})
        answer = ChatToResponses(doc, stream=stream)
        if box.kind != "ollama":
            return Outbound(CHAT, sent, answer)
        chat = to_ollama.OllamaToOpenAI(model, stream=stream, completion=False, include_usage=True)
        return Outbound(to_ollama.CHAT, sent, Chained(chat, answer))

    def plan(box: BoxState) -> Outbound:
        serves = serves_responses(box)
        other = None if serves is True else translated(box)
        if other is None:
            return same(box)
        if serves is False:
            return other
        out = same(box)
        return Outbound(out.path, out.body, instead=lambda _answer: other)

    def unable(box: BoxState) -> bool:
        return serves_responses(box) is False and isinstance(
            variants[box.kind == "ollama"], BadRequest
        )

    errors = [v for v in variants.values() if isinstance(v, BadRequest)]
    return Routed(plan, error=errors[0] if errors else None, unable=unable)


class Chained:
    """Two translators in a row: the box's answer through ``first``, then ``second``
    (Ollama -> chat completions -> Responses)."""

    def __init__(self, first: Translator, second: ChatToResponses) -> None:
        self._first = first
        self._second = second

    def content_type(self, status: int, upstream: str) -> str:
        return self._second.content_type(status, self._first.content_type(status, upstream))

    def chunk(self, data: bytes) -> bytes:
        return self._second.chunk(self._first.chunk(data))

    def end(self) -> bytes:
        return self._second.chunk(self._first.end()) + self._second.end()

    def whole(self, status: int, body: bytes) -> bytes:
        middle = self._first.whole(status, body)
        if status < 400 and self._second.streaming:  # the first made it a stream
            return self._second.chunk(middle) + self._second.end()
        return self._second.whole(status, middle)

    def broken(self, error: Any) -> bytes:
        return self._second.broken(error)
