"""How one client request reaches a given box: its bytes as they came when the box speaks
the client's API, a translation when it does not.

A plan is called for each box tried (the first choice and any failover), so it should
not fail: when a box of another kind has the model, the request is translated once, up
front, before a slot is taken (``Routed.check``); when none has, it is not translated at
all (an Ollama-only fleet pays nothing for the OpenAI boxes it does not have). When a
request cannot be translated (an image URL for an Ollama box, say), only boxes that speak
the client's API may serve it; the error says why, for when no such box has the model.
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
from ollamux.routing.errors import BadRequest, ProxyError
from ollamux.routing.state import BoxState, Fleet

Plan = Callable[[BoxState], Outbound]
OPENAI_KINDS = frozenset({"llama-server", "openai"})
OLLAMA_KINDS = frozenset({"ollama"})


@dataclass(frozen=True, slots=True)
class Routed:
    plan: Plan
    kinds: frozenset[str] | None = None  # None: any kind of box can serve it
    error: ProxyError | None = None  # why other kinds cannot
    native: frozenset[str] | None = None  # the kinds left when it cannot be translated
    prepare: Callable[[], object] | None = None  # translate for the other kinds, now
    speaks: Callable[[BoxState], bool] | None = None  # the box gets the client's bytes
    # Boxes that cannot take it whatever their kind (one that lacks the client's API and
    # that the request cannot be translated for); None: the kinds alone say.
    unable: Callable[[BoxState], bool] | None = None

    def check(self, fleet: Fleet, key: str) -> frozenset[str] | None:
        """The kinds of box that may serve this request. Translates it up front when a box
        of another kind has the model, so a request that cannot be translated is known
        before a slot is taken; refuses one that only such boxes could serve. A box of a
        fitting kind that is down now still counts: the dispatcher then says 503 and why,
        as for any model whose boxes are down."""
        kinds, error = self.kinds, self.error
        if self.prepare is not None and self.native is not None and self.speaks is not None:
            speaks = self.speaks
            if any(key in b.models and not speaks(b) for b in fleet.boxes):
                try:
                    self.prepare()
                except BadRequest as exc:
                    kinds, error = self.native, exc
        if error is None or not fleet.knows(key):
            return kinds
        if not any(key in b.models and self._can(b, kinds) for b in fleet.boxes):
            raise error
        return kinds

    def can(self, box: BoxState) -> bool:
        return self._can(box, self.kinds)

    def _can(self, box: BoxState, kinds: frozenset[str] | None) -> bool:
        if self.unable is not None:
            return not self.unable(box)
        return box.kind in (kinds or ())


def speaks_openai(box: BoxState) -> bool:
    return box.kind != "ollama" or box.openai_api is True


def _speaks_ollama(box: BoxState) -> bool:
    return box.kind == "ollama"


def for_ollama_client(path: str, body: bytes, doc: dict[str, Any], model: str, key: str) -> Routed:
    """An Ollama route: Ollama boxes get the bytes, others a translation to /v1."""

    def native(box: BoxState) -> Outbound:
        return Outbound(path, with_model(body, doc, own_id(box, key, model), model))

    if path not in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
        return Routed(native, OLLAMA_KINDS)  # /api/show: Ollama boxes only
    convert = _ollama_converter(path, doc)
    variants: dict[bool, to_openai.Converted] = {}

    def translated(llama: bool) -> to_openai.Converted:
        if llama not in variants:
            variants[llama] = convert(llama)
        return variants[llama]

    def plan(box: BoxState) -> Outbound:
        if box.kind == "ollama":
            return native(box)
        conv = translated(box.kind == "llama-server")
        translator: Translator
        if conv.path == to_openai.EMBEDDINGS:
            translator = to_openai.EmbeddingsToOllama(model, legacy=path == "/api/embeddings")
        else:
            generate = path == "/api/generate"
            stream = bool(conv.body["stream"])
            translator = to_openai.OpenAIToOllama(model, stream=stream, generate=generate)
        sent = orjson.dumps({**conv.body, "model": own_id(box, key, model)})
        return Outbound(conv.path, sent, translator)

    return Routed(
        plan,
        native=OLLAMA_KINDS,
        prepare=lambda: [translated(llama) for llama in (True, False)],
        speaks=_speaks_ollama,
    )


def for_openai_client(path: str, body: bytes, doc: dict[str, Any], model: str, key: str) -> Routed:
    """A /v1 route: boxes that speak OpenAI's API (an Ollama box's own /v1 included) get
    the bytes; other Ollama boxes a translation to their native /api."""

    def same(box: BoxState) -> Outbound:
        return Outbound(path, with_model(body, doc, own_id(box, key, model), model))

    convert = _openai_converter(path)
    converted: list[tuple[str, dict[str, Any]]] = []

    def translated() -> tuple[str, dict[str, Any]]:
        if not converted:
            converted.append(convert(doc))
        return converted[0]

    def plan(box: BoxState) -> Outbound:
        if speaks_openai(box):
            return same(box)
        native_path, native = translated()
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

    return Routed(plan, native=OPENAI_KINDS, prepare=translated, speaks=speaks_openai)


def with_model(body: bytes, doc: Mapping[str, Any], own: str, model: str) -> bytes:
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
