"""How an Anthropic Messages request reaches each box: the client's bytes where the box
serves ``/v1/messages`` itself, a translation where it does not.

Which boxes serve it (``speaks``): an Ollama box from version 0.14.0 (its
``/api/version``, which the prober reads), and every llama-server (recent builds serve
``/v1/messages`` and ``/v1/messages/count_tokens``). A box that answers 404 all the same
(an older llama-server) is remembered as not serving it, until its version changes, and
gets the translation from then on, starting with the request that found out; the 404 is
no failure. A 404 in Anthropic's own shape is the box's answer (the model is gone), not
a missing route. Generic OpenAI-compatible boxes always get the translation: chat
completions is all they promise. ``count_tokens`` goes through only to llama-server
(Ollama does not serve it); elsewhere it is a one-token generation whose usage counts the
prompt with the box's own tokenizer and chat template.
"""

from __future__ import annotations

from typing import Any

import orjson

from ollamux.backends.relay import Outbound, Translator
from ollamux.backends.translate.anthropic_request import chat_request, ollama_chat_request
from ollamux.backends.translate.anthropic_response import (
    AnthropicErrors,
    CountFromOpenAI,
    OpenAIToAnthropic,
    from_ollama,
)
from ollamux.backends.translate.models import own_id
from ollamux.backends.translate.plans import Routed
from ollamux.routing.errors import BadRequest
from ollamux.routing.state import BoxState, version_key

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
OLLAMA_MESSAGES = (0, 14, 0)  # the first Ollama that serves /v1/messages


def speaks(box: BoxState, *, count: bool = False) -> bool:
    """The box serves Anthropic's route itself: known from kind and version, corrected
    by what it answered (``BoxState.lacking``, cleared when its version changes)."""
    if (COUNT_TOKENS if count else MESSAGES) in box.lacking:
        return False
    if box.kind == "llama-server":
        return True
    if box.kind == "ollama" and not count:
        return version_key(box.version) >= OLLAMA_MESSAGES
    return False


def _own_error(answer: bytes) -> bool:
    """A 404 in Anthropic's shape comes from a box that serves the route (Ollama's
    "model not found"); an unknown route is plain text (Ollama) or OpenAI's error shape
    (llama-server's "File Not Found")."""
    try:
        doc = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("type") == "error"


def for_anthropic_client(
    path: str,
    body: bytes,
    doc: dict[str, Any],
    model: str,
    key: str,
) -> Routed:
    count = path == COUNT_TOKENS
    choice = doc.get("tool_choice")
    forced = isinstance(choice, dict) and choice.get("type") in ("any", "tool")
    stream = doc.get("stream") is True and not count
    edits = doc.get("context_management") is not None
    # Translated once, up front; a request one kind of box cannot take is refused (400,
    # naming the field) only when such a box is the one chosen.
    openai: dict[str, Any] | BadRequest
    ollama: dict[str, Any] | BadRequest
    try:
        openai = chat_request(doc, count=count)
    except BadRequest as exc:
        openai = exc
    try:
        ollama = ollama_chat_request(doc, count=count)
    except BadRequest as exc:
        ollama = exc

    def translated(box: BoxState) -> Outbound:
        own = own_id(box, key, model)
        translator: Translator
        if box.kind == "ollama":
            if isinstance(ollama, BadRequest):
                raise ollama
            translator = from_ollama(model, stream=stream, count=count, edits=edits)
            return Outbound("/api/chat", orjson.dumps({**ollama, "model": own}), translator)
        if isinstance(openai, BadRequest):
            raise openai
        translator = (
            CountFromOpenAI() if count else OpenAIToAnthropic(model, stream=stream, edits=edits)
        )
        sent = orjson.dumps({**openai, "model": own})
        return Outbound("/v1/chat/completions", sent, translator)

    def plan(box: BoxState) -> Outbound:
        if box.kind == "ollama" and forced and isinstance(ollama, BadRequest):
            raise ollama  # Ollama's own /v1/messages would ignore tool_choice: refused either way
        if not speaks(box, count=count):
            return translated(box)
        own = own_id(box, key, model)
        sent = body if own == model else orjson.dumps({**doc, "model": own})

        def instead(answer: bytes) -> Outbound | None:
            if _own_error(answer):
                return None  # the box serves the route; its 404 is about the model
            return translated(box)

        return Outbound(path, sent, AnthropicErrors(), instead)

    return Routed(plan)
