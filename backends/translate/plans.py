"""How one client request reaches a given box: its bytes as they came when the box speaks
the client's API, a translation when it does not.

A plan is called for each box tried (the first choice and any failover), so it must not
fail: requests are translated once, up front, before a slot is taken. When a request
cannot be translated (an image URL for an Ollama box, say), only boxes that speak the
client's API may serve it (``Routed.kinds``); ``Routed.error`` says why, for when no
such box has the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ollamux.backends.relay import Outbound, Translator
from ollamux.backends.translate import ollama_client as to_openai
from ollamux.backends.translate import openai_client as to_ollama
from ollamux.backends.translate.models import own_id
from ollamux.routing.errors import BadRequest
from ollamux.routing.state import BoxState, Fleet

Plan = Callable[[BoxState], Outbound]
OPENAI_KINDS = frozenset({"llama-server", "openai"})
OLLAMA_KINDS = frozenset({"ollama"})


@dataclass(slots=True)
class Routed:
    plan: Plan
    kinds: frozenset[str] | None = None  # None: any kind of box can serve it
    error: BadRequest | None = None  # why other kinds cannot
    # A translation made only if a box that needs it may serve the request: ``needs``
    # says which boxes do; ``convert`` makes it (once) and returns why it cannot be made.
    convert: Callable[[], BadRequest | None] | None = None
    needs: Callable[[BoxState], bool] | None = None
    fallback: frozenset[str] | None = None  # the kinds left when it cannot be made

    def check(self, fleet: Fleet, key: str) -> None:
        """Refuse up front a request that only boxes unable to take it could serve."""
        if self.convert is not None and self.needs is not None:
            needs = self.needs
            if any(key in b.models and needs(b) for b in fleet.boxes):
                self.error = self.convert()
                if self.error is not None:
                    self.kinds = self.fallback
            self.convert = None
        if self.error is None or not fleet.knows(key):
            return
        kinds = self.kinds
        if not any(b.routable and key in b.models and b.kind in (kinds or ()) for b in fleet.boxes):
            raise self.error


def speaks_openai(box: BoxState) -> bool:
    return box.kind != "ollama" or box.openai_api is True


def for_ollama_client(path: str, body: bytes, doc: dict[str, Any], model: str, key: str) -> Routed:
    """An Ollama route: Ollama boxes get the bytes, others a translation to /v1."""

    def native(box: BoxState) -> Outbound:
        return Outbound(path, _with_model(body, doc, own_id(box, key, model), model))

    if path not in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
        return Routed(native, OLLAMA_KINDS)  # /api/show: Ollama boxes only
    convert = _ollama_converter(path, doc)
    try:
        variants = {llama: convert(llama) for llama in (True, False)}
    except BadRequest as exc:
        return Routed(native, OLLAMA_KINDS, exc)

    def plan(box: BoxState) -> Outbound:
        if box.kind == "ollama":
            return native(box)
        conv = variants[box.kind == "llama-server"]
        translator: Translator
        if conv.path == to_openai.EMBEDDINGS:
            translator = to_openai.EmbeddingsToOllama(model, legacy=path == "/api/embeddings")
        else:
            generate = path == "/api/generate"
            stream = bool(conv.body["stream"])
            translator = to_openai.OpenAIToOllama(model, stream=stream, generate=generate)
        sent = orjson.dumps({**conv.body, "model": own_id(box, key, model)})
        return Outbound(conv.path, sent, translator)

    return Routed(plan)


def for_openai_client(path: str, body: bytes, doc: dict[str, Any], model: str, key: str) -> Routed:
    """A /v1 route: boxes that speak OpenAI's API (an Ollama box's own /v1 included) get
    the bytes; other Ollama boxes a translation to their native /api."""

    def same(box: BoxState) -> Outbound:
        return Outbound(path, _with_model(body, doc, own_id(box, key, model), model))

    made: list[tuple[str, dict[str, Any]] | BadRequest] = []

    def converted() -> tuple[str, dict[str, Any]]:
        """The request in Ollama's shape, made the first time a box needs it."""
        if not made:
            try:
                made.append(_openai_converter(path)(doc))
            except BadRequest as exc:
                made.append(exc)
        if isinstance(made[0], BadRequest):
            raise made[0]
        return made[0]

    def convert() -> BadRequest | None:
        try:
            converted()
        except BadRequest as exc:
            return exc
        return None

    def plan(box: BoxState) -> Outbound:
        if speaks_openai(box):
            return same(box)
        native_path, native = converted()
        translator: Translator
        if native_path == to_ollama.EMBED:
            base64 = doc.get("encoding_format") == "base64"
            translator = to_ollama.OllamaToEmbeddings(model, base64=base64)
        else:
            options = doc.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            translator = to_ollama.OllamaToOpenAI(
                model,
                stream=bool(native["stream"]),
                completion=native_path == to_ollama.GENERATE,
                include_usage=usage,
            )
        sent = orjson.dumps({**native, "model": own_id(box, key, model)})
        return Outbound(native_path, sent, translator)

    return Routed(
        plan,
        convert=convert,
        needs=lambda box: not speaks_openai(box),
        fallback=OPENAI_KINDS,
    )


def _with_model(body: bytes, doc: Mapping[str, Any], own: str, model: str) -> bytes:
    """The client's bytes, unless the box knows the model by another id: then the same
    body with only ``model`` changed."""
    if own == model:
        return body
    return orjson.dumps({**doc, "model": own})


def _ollama_converter(path: str, doc: Mapping[str, Any]) -> Callable[[bool], to_openai.Converted]:
    if path == "/api/chat":
        return lambda llama: to_openai.chat_request(doc, llama=llama)
    if path == "/api/generate":
        return lambda llama: to_openai.generate_request(doc, llama=llama)
    return lambda llama: to_openai.embed_request(doc, legacy=path == "/api/embeddings")


def _openai_converter(path: str) -> Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]:
    if path == "/v1/chat/completions":
        return lambda doc: (to_ollama.CHAT, to_ollama.chat_request(doc))
    if path == "/v1/completions":
        return lambda doc: (to_ollama.GENERATE, to_ollama.completion_request(doc))
    return lambda doc: (to_ollama.EMBED, to_ollama.embed_request(doc))
