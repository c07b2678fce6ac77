"""A simulated llama.cpp ``llama-server``: a real aiohttp server on loopback that answers
like one, for tests and demos next to the simulated Ollama box.

- Single-model mode: one model, loaded at start (``/health`` answers 503 "Loading model"
  until it is, and so does every other route); the request's ``model`` is not checked.
- Router mode (``router=True``): every listed model, loaded on demand (at most
  ``models_max`` at once, the least recently used idle one is unloaded); ``/v1/models``
  entries carry ``status.value``; ``/props`` and ``/slots`` take ``?model=``;
  ``POST /models/load`` and ``/models/unload`` with ``{"model": id}`` answer
  ``{"success": true}`` (a load once the model is loaded).
- ``n_parallel`` slots per loaded model with a FIFO queue beyond (the Ollama simulator's
  scheduler), decode at ``tokens_per_s``, usage and ``timings`` as llama-server sends them.

    async with SimLlama(LlamaConfig(models=["org/Model-GGUF:Q4_K_M"])) as box:
        ...  # box.url

    python -m ollamux.backends.sim.llama_server --port 8081 --models org/A-GGUF:Q4_K_M --router
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import random
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ollamux.backends.sim.engine import QueueFull, Scheduler, SimStats, token_ids
from ollamux.backends.sim.messages import SSE, MessagesError, Reply, chat_request

_TEXT = (
    "a quiet river runs past old stone walls where green moss grows and small birds rest "
    "under warm light while distant bells ring over fields of tall grass and wild flowers"
)
_WORDS = _TEXT.split()
_CREATED = 1748779200  # 2025-06-01, so model lists are stable
_SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _floats_base64(vector: list[float]) -> str:
    """OpenAI's base64 embedding encoding (``encoding_format: base64``): little-endian
    float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@dataclass
class LlamaConfig:
    name: str = "llama"
    models: list[str] = field(default_factory=lambda: ["ggml-org/gemma-3-1b-it-GGUF:Q4_K_M"])
    router: bool = False
    n_parallel: int = 2  # --parallel: slots per loaded model
    models_max: int = 4  # router mode: models loaded at once
    preloaded: list[str] = field(default_factory=list)  # router mode: loaded at start
    load_time: float = 0.0
    tokens_per_s: float = 0.0  # 0: instant
    default_tokens: int = 8
    embedding_dim: int = 8
    max_queue: int = 512
    n_ctx: int = 4096
    build_info: str = "b6500-sim"
    messages: bool = True  # serves Anthropic's /v1/messages (False: an older build, 404)


@dataclass
class LlamaFaults:
    error_status: int | None = None  # inference requests answer this status


class _Limits:
    """The scheduler's knobs, as llama-server's flags set them."""

    def __init__(self, config: LlamaConfig) -> None:
        self.max_loaded = config.models_max if config.router else 1
        self.num_parallel = config.n_parallel
        self.max_queue = config.max_queue
        self.load_time = config.load_time
        self.keep_alive = -1.0  # llama-server keeps a model until it needs the room


class _Error(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "type": kind}}


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _words(seed: str, n: int) -> list[str]:
    h = zlib.crc32(seed.encode())
    words = [_WORDS[(h + i * 7) % len(_WORDS)] for i in range(n)]
    return [w + " " for w in words[:-1]] + words[-1:]


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


class SimLlama:
    """One simulated llama-server. ``received`` keeps the last request bodies as sent."""

    def __init__(self, config: LlamaConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.faults = LlamaFaults()
        self.received: deque[tuple[str, bytes]] = deque(maxlen=64)
        self.url = ""
        self._scheduler = Scheduler(_Limits(config), self.stats)
        self._runner: web.AppRunner | None = None
        self._loading: asyncio.Task[float] | None = None
        self._ids = 0

    async def __aenter__(self) -> SimLlama:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        return self.config.router or bool(self._scheduler.loaded())

    def loaded_models(self) -> list[str]:
        return [m.name for m in self._scheduler.loaded()]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"simulated boxes listen on loopback only, not {host!r}")
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._guard])
        app.add_routes(self._routes())
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        self._runner = runner
        self.url = f"http://{host}:{runner.addresses[0][1]}"
        if self.config.router:
            for name in self.config.preloaded:
                self._scheduler.preload(name)
        elif self.config.load_time > 0:
            self._loading = asyncio.create_task(self._scheduler.load(self.config.models[0], -1))
        else:
            self._scheduler.preload(self.config.models[0])
        return self.url

    async def stop(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._scheduler.reset()

    def _routes(self) -> list[web.AbstractRouteDef]:
        routes: list[web.AbstractRouteDef] = [web.get("/health", self._health)]
        routes.append(web.get("/props", self._props))
        routes += [web.get("/slots", self._slots), web.get("/sim/stats", self._sim_stats)]
        for prefix in ("", "/v1"):
            routes += [
                web.get(f"{prefix}/models", self._models),
                web.post(f"{prefix}/chat/completions", self._chat),
                web.post(f"{prefix}/completions", self._completions),
                web.post(f"{prefix}/embeddings", self._embeddings),
            ]
        routes.append(web.get("/v1/health", self._health))
        routes += self._messages_routes()
        if self.config.router:
            routes.append(web.post("/models/load", self._load))
            routes.append(web.post("/models/unload", self._unload))
        return routes

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Errors in llama-server's shape; every route but /health waits for the model."""
        if not self.ready and not request.path.endswith("/health"):
            return _json(error_body(503, "Loading model", "unavailable_error"), 503)
        try:
            return await handler(request)
        except _Error as exc:
            return _json(error_body(exc.status, exc.message, exc.kind), exc.status)

    # -- metadata ---------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        if not self.ready:
            return _json(error_body(503, "Loading model", "unavailable_error"), 503)
        return _json({"status": "ok"})

    async def _sim_stats(self, request: web.Request) -> web.Response:
        return _json({**self.stats.as_dict(), "loaded": self.loaded_models()})

    def _instance(self, request: web.Request, *, required: bool) -> str:
        """The model instance a GET is about (router mode: ``?model=``, never loaded)."""
        if not self.config.router:
            return self.config.models[0]
        name = request.query.get("model")
        if name is None:
            if required:
                raise _Error(400, "model name is missing from the request")
            return ""
        if name not in self.config.models:
            raise _Error(404, f"model '{name}' not found", "not_found_error")
        if name not in self.loaded_models():
            raise _Error(400, f"model '{name}' is not loaded")
        return name

    async def _props(self, request: web.Request) -> web.Response:
        name = self._instance(request, required=False)
        if not name:
            return _json({"role": "router", "build_info": self.config.build_info})
        settings = {"id": 0, "n_ctx": self.config.n_ctx, "params": self._params()}
        return _json(
            {
                "default_generation_settings": settings,
                "total_slots": self.config.n_parallel,
                "model_path": f"/models/{name.replace('/', '_')}.gguf",
                "chat_template": "{{ messages }}",
                "modalities": {"vision": False},
                "build_info": self.config.build_info,
                "is_sleeping": False,
            }
        )

    async def _slots(self, request: web.Request) -> web.Response:
        self._instance(request, required=True)
        busy = self.stats.active
        return _json(
            [
                {"id": i, "n_ctx": self.config.n_ctx, "is_processing": i < busy}
                | {"params": self._params(), "next_token": {"has_next_token": i < busy}}
                for i in range(self.config.n_parallel)
            ]
        )

    def _params(self) -> dict[str, Any]:
        return {"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": -1}

    async def _models(self, request: web.Request) -> web.Response:
        loaded = set(self.loaded_models())
        data, twins = [], []
        for name in self.config.models:
            size = 700_000_000 + zlib.crc32(name.encode()) % 1_000_000
            meta = {"n_params": 1_000_000_000, "n_ctx_train": self.config.n_ctx, "size": size}
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": _CREATED,
                "owned_by": "llamacpp",
                "meta": meta,
            }
            if self.config.router:
                entry["status"] = {"value": "loaded" if name in loaded else "unloaded"}
            data.append(entry)
            twins.append({"name": name, "model": name, "size": size, "type": "model"})
            twins[-1]["details"] = {"format": "gguf", "family": "gemma", "families": ["gemma"]}
        return _json({"object": "list", "data": data, "models": twins})

    async def _load(self, request: web.Request) -> web.Response:
        name = self._model(_object(await request.read()))
        await self._scheduler.load(name, -1)
        return _json({"success": True})

    async def _unload(self, request: web.Request) -> web.Response:
        self._scheduler.unload(self._model(_object(await request.read())))
        return _json({"success": True})

    # -- inference --------------------------------------------------------------------

    async def _doc(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        self.received.append((request.path, raw))
        self.stats.requests += 1
        if self.faults.error_status is not None:
            raise _Error(self.faults.error_status, "simulated failure", "server_error")
        return _object(raw)

    def _model(self, doc: dict[str, Any]) -> str:
        if not self.config.router:
            return self.config.models[0]
        name = doc.get("model")
        if name not in self.config.models:
            raise _Error(404, f"model '{name}' not found", "not_found_error")
        return str(name)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        doc = await self._doc(request)
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Error(400, "'messages' is required")
        seed = _text(messages[-1].get("content")) if isinstance(messages[-1], dict) else ""
        prompt = token_ids(
            " ".join(_text(m.get("content")) for m in messages if isinstance(m, dict))
        )
        answer = _ChatAnswer(doc, seed, self.config.default_tokens)
        return await self._generate(request, doc, prompt, answer)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        doc = await self._doc(request)
        prompt = doc.get("prompt")
        if not isinstance(prompt, str | list):
            raise _Error(400, "'prompt' must be a string or an array of strings")
        seed = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        answer = _TextAnswer(doc, seed, self.config.default_tokens)
        return await self._generate(request, doc, token_ids(seed), answer)

    async def _generate(
        self, request: web.Request, doc: dict[str, Any], prompt: list[int], answer: _Answer
    ) -> web.StreamResponse:
        name = self._model(doc)
        self._ids += 1
        head = {"id": f"{answer.prefix}-sim{self._ids}", "created": int(time.time())}
        head.update(model=doc.get("model") or name, system_fingerprint=self.config.build_info)
        try:
            async with self._scheduler.lease(name, prompt, -1) as lease:
                lease.remember(prompt)
                usage = {"prompt_tokens": max(1, len(prompt)), "completion_tokens": answer.count}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                if doc.get("stream") is True:
                    return await self._stream(request, doc, head, answer, usage)
                started = time.perf_counter()
                await self._decode(answer.count)
                body = answer.whole(head, usage)
                return _json({**body, "timings": _timings(usage, started)})
        except QueueFull:
            raise _Error(503, "the server is busy", "unavailable_error") from None

    async def _decode(self, tokens: int) -> None:
        if self.config.tokens_per_s > 0 and tokens:
            await asyncio.sleep(tokens / self.config.tokens_per_s)

    async def _stream(
        self,
        request: web.Request,
        doc: dict[str, Any],
        head: dict[str, Any],
        answer: _Answer,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=_SSE)
        await resp.prepare(request)
        started = time.perf_counter()
        rate = self.config.tokens_per_s
        for i, chunk in enumerate(answer.chunks(head)):
            if rate > 0 and i > 0:
                await asyncio.sleep(1 / rate)
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        timings = _timings(usage, started)
        await resp.write(
            b"data: " + orjson.dumps({**answer.final(head), "timings": timings}) + b"\n\n"
        )
        options = doc.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            tail = {**head, "object": answer.chunk_object, "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps({**tail, "timings": timings}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        name = self._model(doc)
        raw = doc.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _Error(400, "'input' must be a string or an array of strings")
        prompt = [t for text in texts for t in token_ids(text)]
        try:
            async with self._scheduler.lease(name, prompt, -1):
                vectors = [_vector(t, self.config.embedding_dim) for t in texts]
        except QueueFull:
            raise _Error(503, "the server is busy", "unavailable_error") from None
        b64 = doc.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _floats_base64(v) if b64 else v}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": len(prompt), "total_tokens": len(prompt)}
        return _json({"object": "list", "data": data, "model": doc.get("model"), "usage": usage})

    # -- Anthropic's Messages API (recent builds) -------------------------------------

    def _messages_routes(self) -> list[web.AbstractRouteDef]:
        if not self.config.messages:
            return []
        return [
            web.post("/v1/messages", self._messages),
            web.post("/v1/messages/count_tokens", self._count_tokens),
        ]

    def _anthropic_chat(self, doc: dict[str, Any], default_max: int | None) -> dict[str, Any]:
        try:
            return chat_request(doc, default_max=default_max)
        except MessagesError as exc:
            raise _Error(400, str(exc)) from None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        doc = await self._doc(request)
        chat = self._anthropic_chat(doc, 4096)  # the README's default max_tokens
        name = self._model(doc)
        messages = chat["messages"]
        seed = _text(messages[-1].get("content"))
        prompt = _prompt(messages)
        answer = _ChatAnswer(chat, seed, self.config.default_tokens)
        calls = [
            (c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
            for c in answer.calls
        ]
        reply = Reply(
            model=doc.get("model") or name,
            thinking=answer.reasoning,
            text=answer.tokens,
            calls=calls,
            finish=answer.reason,
            input_tokens=max(1, len(prompt)),
            output_tokens=answer.count,
            ident=f"msg_{zlib.crc32((name + seed).encode()):08x}",  # same ask, same bytes
            final_input=False,
        )
        try:
            async with self._scheduler.lease(name, prompt, -1) as lease:
                lease.remember(prompt)
                if not chat["stream"]:
                    await self._decode(answer.count)
                    return _json(reply.message())
                resp = web.StreamResponse(headers=SSE)
                await resp.prepare(request)
                for i, chunk in enumerate(reply.events()):
                    if self.config.tokens_per_s > 0 and i > 0:
                        await asyncio.sleep(1 / self.config.tokens_per_s)
                    await resp.write(chunk)
                return resp
        except QueueFull:
            raise _Error(503, "the server is busy", "unavailable_error") from None

    async def _count_tokens(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        self._model(doc)
        chat = self._anthropic_chat(doc, None)
        return _json({"input_tokens": max(1, len(_prompt(chat["messages"])))})


def _prompt(messages: list[dict[str, Any]]) -> list[int]:
    return token_ids(" ".join(_text(m.get("content")) for m in messages if isinstance(m, dict)))


def _object(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Error(400, f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _Error(400, "the request body must be a JSON object")
    return doc


def _vector(text: str, dim: int) -> list[float]:
    rng = random.Random(zlib.crc32(text.encode()))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = sum(x * x for x in vec) ** 0.5 or 1.0
    return [x / norm for x in vec]


def _timings(usage: dict[str, int], started: float) -> dict[str, Any]:
    predicted_ms = (time.perf_counter() - started) * 1000
    return {
        "cache_n": 0,
        "prompt_n": usage["prompt_tokens"],
        "prompt_ms": 0.5,
        "predicted_n": usage["completion_tokens"],
        "predicted_ms": round(predicted_ms, 3),
    }


class _Answer:
    """What the model says, as whole choices or as streamed chunks."""

    prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(self, doc: dict[str, Any], seed: str, default: int) -> None:
        limit = doc.get("max_tokens") or doc.get("max_completion_tokens")
        natural = _words(seed, default)
        if isinstance(limit, int) and 0 < limit < len(natural):
            self.tokens, self.reason = natural[:limit], "length"
        else:
            self.tokens, self.reason = natural, "stop"
        n = doc.get("n")
        self.n = n if isinstance(n, int) and 1 <= n <= 8 else 1

    @property
    def count(self) -> int:
        return len(self.tokens) * self.n

    def whole(self, head: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        raise NotImplementedError

    def chunks(self, head: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def final(self, head: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class _TextAnswer(_Answer):
    def whole(self, head: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "text": "".join(self.tokens),
                "finish_reason": self.reason,
                "logprobs": None,
            }
            for i in range(self.n)
        ]
        return {**head, "object": "text_completion", "choices": choices, "usage": usage}

    def chunks(self, head: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                **head,
                "object": "text_completion",
                "choices": [{"index": i, "text": t, "finish_reason": None}],
            }
            for i in range(self.n)
            for t in self.tokens
        ]

    def final(self, head: dict[str, Any]) -> dict[str, Any]:
        choices = [{"index": i, "text": "", "finish_reason": self.reason} for i in range(self.n)]
        return {**head, "object": "text_completion", "choices": choices}


class _ChatAnswer(_Answer):
    """Tools offered to a user turn (and ``tool_choice`` not "none") are called instead of
    answering: the named one, or the first (the first two with ``parallel_tool_calls``).
    ``reasoning_effort`` low/medium/high adds reasoning; ``response_format`` gives JSON."""

    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def __init__(self, doc: dict[str, Any], seed: str, default: int) -> None:
        super().__init__(doc, seed, default)
        self.calls = _tool_calls(doc)
        if self.calls:
            self.tokens, self.reason = [], "tool_calls"
        elif isinstance(doc.get("response_format"), dict):
            fmt = doc["response_format"]
            if fmt.get("type") in ("json_object", "json_schema"):
                self.tokens = re.findall(r"\S+\s*", json.dumps({"answer": seed[:40]}))
        think = doc.get("reasoning_effort") in ("low", "medium", "high")
        self.reasoning = _words("think:" + seed, max(1, default // 2)) if think else []

    def whole(self, head: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.tokens) or None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [
                {"index": j, "id": c["id"], "type": "function", "function": c["function"]}
                for j, c in enumerate(self.calls)
            ]
        choices = [
            {"index": i, "message": message, "finish_reason": self.reason} for i in range(self.n)
        ]
        return {**head, "object": "chat.completion", "choices": choices, "usage": usage}

    def chunks(self, head: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for i in range(self.n):
            out.append(self._delta(head, i, {"role": "assistant", "content": None}))
            out += [self._delta(head, i, {"reasoning_content": t}) for t in self.reasoning]
            for j, call in enumerate(self.calls):
                fn = call["function"]
                first = {"index": j, "id": call["id"], "type": "function"}
                first["function"] = {"name": fn["name"], "arguments": ""}
                out.append(self._delta(head, i, {"tool_calls": [first]}))
                args = fn["arguments"]
                for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                    part = {"index": j, "function": {"arguments": piece}}
                    out.append(self._delta(head, i, {"tool_calls": [part]}))
            out += [self._delta(head, i, {"content": t}) for t in self.tokens]
        return out

    def final(self, head: dict[str, Any]) -> dict[str, Any]:
        choices = [{"index": i, "delta": {}, "finish_reason": self.reason} for i in range(self.n)]
        return {**head, "object": self.chunk_object, "choices": choices}

    def _delta(self, head: dict[str, Any], i: int, delta: dict[str, Any]) -> dict[str, Any]:
        choice = {"index": i, "delta": delta, "finish_reason": None}
        return {**head, "object": self.chunk_object, "choices": [choice]}


def _tool_calls(doc: dict[str, Any]) -> list[dict[str, Any]]:
    tools = [
        t["function"] for t in doc.get("tools") or [] if isinstance(t, dict) and t.get("function")
    ]
    messages = doc.get("messages") or []
    choice = doc.get("tool_choice", "auto")
    if not tools or choice == "none" or not messages or messages[-1].get("role") != "user":
        return []
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        tools = [t for t in tools if t.get("name") == wanted] or tools[:1]
    picked = tools[:2] if doc.get("parallel_tool_calls") is True else tools[:1]
    seed = _text(messages[-1].get("content"))
    return [
        {
            "id": f"call_{zlib.crc32((seed + fn['name']).encode()):08x}",
            "function": {"name": fn["name"], "arguments": _arguments(fn, seed)},
        }
        for fn in picked
    ]


def _arguments(fn: dict[str, Any], seed: str) -> str:
    params = fn.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    words = [w.strip() for w in _words(seed, 3)]
    args = {k: words[i % len(words)] for i, k in enumerate(props or {})}
    return orjson.dumps(args).decode()


# -- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ollamux.backends.sim.llama_server",
        description="Serve one simulated llama-server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="llama")
    parser.add_argument("--models", default="ggml-org/gemma-3-1b-it-GGUF:Q4_K_M")
    parser.add_argument("--router", action="store_true", help="router mode: load on demand")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--tokens-per-s", type=float, default=0.0)
    parser.add_argument("--load-time", type=float, default=0.0)
    args = parser.parse_args(argv)
    config = LlamaConfig(
        name=args.name,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        router=args.router,
        n_parallel=args.parallel,
        tokens_per_s=args.tokens_per_s,
        load_time=args.load_time,
    )
    asyncio.run(_serve(config, args.host, args.port))


async def _serve(config: LlamaConfig, host: str, port: int) -> None:
    box = SimLlama(config)
    url = await box.start(host, port)
    print(f"simulated llama-server {config.name} listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await box.stop()


if __name__ == "__main__":
    main()
