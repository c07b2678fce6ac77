"""A simulated Ollama box: a real aiohttp server on loopback that answers like Ollama.

Tests, the demo and the benchmarks put it where a GPU box would be. Its scheduler
(``backends.sim.engine``) loads, evicts, queues and caches like Ollama's, so a
proxy's routing decisions show in its numbers; ``SimBox.faults`` makes it misbehave on
purpose. Benchmarks also use it as the "talk to the box directly" baseline, so the
request path stays lean: no access log, orjson, no work that a flag does not ask for.

    async with SimBox(SimConfig(models=["llama3.2"], num_parallel=2)) as box:
        ...  # box.url is "http://127.0.0.1:PORT"

    python -m ollamux.backends.sim.ollama --port 11501 --name gpu-a --models llama3.2,qwen2.5:7b
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from ollamux.backends.sim.audio import Handler as AudioHandler
from ollamux.backends.sim.engine import (
    Lease,
    QueueFull,
    Scheduler,
    SimStats,
    answer_tokens,
    chat_prompt,
    detached_lease,
    digest,
    embedding,
    family,
    generate_prompt,
    json_tokens,
    parameter_count,
    parse_keep_alive,
    size_bytes,
    token_ids,
)
from ollamux.backends.sim.http import (
    NDJSON,
    ApiError,
    error_response,
    guard,
    json_response,
    model_of,
    normalize,
    read_object,
)
from ollamux.backends.sim.messages import SSE, MessagesError, Reply, chat_request
from ollamux.backends.sim.messages import error_body as messages_error
from ollamux.backends.sim.responses import Handler as ResponsesHandler
from ollamux.backends.sim.store import Store

__all__ = [
    "BUSY",
    "Faults",
    "SimBox",
    "SimConfig",
    "SimStats",
    "main",
    "normalize",
    "parse_keep_alive",
]

BUSY = "server busy, please try again.  maximum pending requests exceeded"
_FAULT_POLL_S = 0.01  # how often a hanging fault looks whether it was switched off
_SHUTDOWN_S = 0.1  # stop() grants in-flight requests this long before cancelling them
_CONTEXT_LENGTH = 4096
_MODIFIED_AT = "2025-06-01T12:00:00.000000+00:00"
_CLOUD = "https://ollama.com:443"


@dataclass
class SimConfig:
    """One box's knobs; the scheduler reads them live, so a test may change them."""

    name: str = "sim"
    models: list[str] = field(default_factory=lambda: ["llama3.2:latest"])
    max_loaded: int = 2
    num_parallel: int = 2
    max_queue: int = 512
    load_time: float = 0.0
    tokens_per_s: float = 0.0  # decode rate per request; 0 = instant, no sleeps at all
    prompt_tokens_per_s: float = 0.0  # only uncached prompt tokens cost time
    default_tokens: int = 8  # answer length when options.num_predict is absent
    keep_alive: float = 300.0
    preloaded: list[str] = field(default_factory=list)
    version: str = "0.12.6"
    embedding_dim: int = 8
    pull_time: float = 0.0  # seconds a /api/pull of a model the box lacks takes
    # Cloud models among ``models``: listed with remote_host, answered without a local slot
    # (Ollama forwards them to ollama.com). /v1/responses is served from version 0.13.3,
    # /v1/audio/transcriptions from 0.20.0.
    remote: list[str] = field(default_factory=list)


@dataclass
class Faults:
    """Switches that make the box misbehave; all off by default, flip them any time."""

    busy_503: int = 0  # answer the next N inference requests with 503 "server busy"
    hang_before_first_byte: bool = False  # inference requests never get headers
    hang_after_chunks: int | None = None  # streams stall after this many chunks
    kill_after_chunks: int | None = None  # streams are aborted after this many chunks
    ps_fail: bool = False  # /api/ps answers 500
    tags_fail: bool = False  # /api/tags answers 500
    error_status: int | None = None  # inference answers this status
    pull_error: str | None = None  # /api/pull fails with this error after the first layer


class _Job:
    """One /api/chat or /api/generate request, parsed."""

    def __init__(self, body: dict[str, Any], chat: bool, started_ns: int) -> None:
        self.chat = chat
        self.started_ns = started_ns
        self.model = model_of(body)  # as the client spelled it; Ollama echoes it back
        self.name = normalize(self.model)
        self.stream = body.get("stream") is not False
        self.keep_alive = _keep_alive(body)
        self.think = bool(body.get("think"))
        fmt = body.get("format")
        self.json_format = fmt if fmt == "json" or isinstance(fmt, dict) else None
        options = body.get("options")
        n = options.get("num_predict") if isinstance(options, dict) else None
        # Absent, or Ollama's -1/-2 ("until the model stops"): the natural answer length.
        self.num_predict = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
        try:
            prompt = chat_prompt(body) if chat else generate_prompt(body)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        self.prompt, self.seed, self.is_load, self.tool = prompt


# -- names, metadata, tokens ----------------------------------------------------------


def _card(name: str) -> dict[str, Any]:
    """The fields /api/tags and /api/ps share."""
    return {
        "name": name,
        "model": name,
        "size": size_bytes(name),
        "digest": digest(name),
        "details": _details(name),
    }


def _details(name: str) -> dict[str, Any]:
    kind = family(name)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": kind,
        "families": [kind],
        "parameter_size": f"{parameter_count(name) / 1e9:.1f}B",
        "quantization_level": "Q4_K_M",
    }


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _wall(ts: float) -> str:
    ts = min(ts, time.time() + 100 * 365 * 86400)  # "forever" still needs a date
    return datetime.fromtimestamp(ts).astimezone().isoformat()


# -- the box --------------------------------------------------------------------------


class SimBox:
    """A simulated Ollama server. ``start()``/``stop()`` may alternate (same port too)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.faults = Faults()
        self.url = ""
        self.port = 0
        self._scheduler = Scheduler(config, self.stats)
        # The models on "disk" and the routes that change them (pull, create, delete, ...).
        models = [*config.models, *(m for m in config.remote if m not in config.models)]
        self.store = Store(models, config, self.faults, self._scheduler.unload)
        self._runner: web.AppRunner | None = None
        self.responses = ResponsesHandler(self._version_text, self._chat_url)
        self.audio = AudioHandler(self._version_text, self._chat_url)

    async def __aenter__(self) -> SimBox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def add_model(self, name: str) -> None:
        self.store.models[normalize(name)] = None

    def loaded_models(self) -> list[str]:
        return [m.name for m in self._scheduler.loaded()]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError(f"simulated box {self.config.name} is already running")
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"simulated boxes listen on loopback only, not {host!r}")
        app = web.Application(client_max_size=64 * 1024 * 1024)  # room for base64 images
        app.add_routes(self._routes())
        # handler_cancellation: a client that goes away cancels its handler at once, so a
        # sleeping generation frees its slot without waiting for the next write to fail.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_S
        )
        await runner.setup()
        try:
            # reuse_address: stop() then start(port=same) must work at once (TIME_WAIT).
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        for name in self.config.preloaded:
            self._scheduler.preload(normalize(name))
        return self.url

    async def stop(self) -> None:
        """Close the listener and every connection; loaded models are forgotten."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._scheduler.reset()

    def _routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/", self._root),
            web.get("/api/version", self._version),
            web.get("/api/tags", self._tags),
            web.get("/api/ps", self._ps),
            web.get("/sim/stats", self._sim_stats),
            web.post("/api/show", guard(self._show)),
            web.post("/api/chat", guard(partial(self._infer, chat=True))),
            web.post("/api/generate", guard(partial(self._infer, chat=False))),
            web.post("/api/embed", guard(partial(self._embed, legacy=False))),
            web.post("/api/embeddings", guard(partial(self._embed, legacy=True))),
            web.post("/v1/responses", self.responses.handle),
            web.post("/v1/audio/transcriptions", self.audio.handle),
            *self.store.routes(),
            *self._messages_routes(),
        ]

    # -- metadata routes ----------------------------------------------------------

    def _version_text(self) -> str:
        return self.config.version

    def _chat_url(self) -> str:
        return self.url + "/api/chat"

    def _remote(self, name: str) -> bool:
        return name in {normalize(m) for m in self.config.remote}

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return json_response({"version": self.config.version})

    async def _tags(self, request: web.Request) -> web.Response:
        if self.faults.tags_fail:
            return error_response(500, "simulated failure")
        cards = [{**_card(n), "modified_at": _MODIFIED_AT} for n in self.store.models]
        for card in cards:
            if self._remote(card["name"]):
                card.update(remote_model=card["name"].removesuffix("-cloud"), remote_host=_CLOUD)
        return json_response({"models": cards})

    async def _ps(self, request: web.Request) -> web.Response:
        if self.faults.ps_fail:
            return error_response(500, "simulated failure")
        cards = [
            {
                **_card(m.name),
                "expires_at": _wall(m.expires_at),
                "size_vram": size_bytes(m.name),
                "context_length": _CONTEXT_LENGTH,
            }
            for m in self._scheduler.loaded()
        ]
        return json_response({"models": cards})

    async def _sim_stats(self, request: web.Request) -> web.Response:
        return json_response({**self.stats.as_dict(), "loaded": self.loaded_models()})

    async def _show(self, request: web.Request) -> web.Response:
        model = model_of(await read_object(request), legacy=True)
        name = normalize(model)
        if name not in self.store.models:
            raise ApiError(404, f"model '{model}' not found")
        kind = family(name)
        info = {
            "general.architecture": kind,
            "general.parameter_count": int(parameter_count(name)),
            f"{kind}.context_length": _CONTEXT_LENGTH,
            f"{kind}.embedding_length": self.config.embedding_dim,
        }
        return json_response(
            {
                "modelfile": f'FROM {name}\nTEMPLATE """{{{{ .Prompt }}}}"""\n'
                f"PARAMETER num_ctx {_CONTEXT_LENGTH}\n",
                "parameters": f"num_ctx                        {_CONTEXT_LENGTH}",
                "template": "{{ .Prompt }}",
                "details": _details(name),
                "model_info": info,
                "capabilities": ["completion"] + (["embedding"] if "embed" in name else []),
                "modified_at": _MODIFIED_AT,
            }
        )

    # -- inference routes ---------------------------------------------------------

    async def _refusal(self) -> web.Response | None:
        """The fault switches that act before a request reaches the scheduler."""
        self.stats.requests += 1
        faults = self.faults
        if faults.busy_503 > 0:
            faults.busy_503 -= 1
            return error_response(503, BUSY)
        if faults.error_status is not None:
            return error_response(faults.error_status, "simulated failure")
        # Faults are plain attributes a test flips, so polling is the interface; it only
        # runs while the fault is on. The client leaving cancels the wait.
        while faults.hang_before_first_byte:  # noqa: ASYNC110
            await asyncio.sleep(_FAULT_POLL_S)
        return None

    def _known(self, model: str) -> str:
        name = normalize(model)
        if name not in self.store.models:
            raise ApiError(404, f'model "{model}" not found, try pulling it first')
        return name

    async def _infer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        refusal = await self._refusal()
        if refusal is not None:
            return refusal
        job = _Job(await read_object(request), chat, started_ns)
        self._known(job.model)
        if job.is_load:
            return await self._load_or_unload(job)
        if self._remote(job.name):  # forwarded to the cloud: no local slot, no queue
            self.stats.active += 1
            try:
                return await self._answer(request, job, detached_lease(job.name))
            finally:
                self.stats.active -= 1
        try:
            async with self._scheduler.lease(job.name, job.prompt, job.keep_alive) as lease:
                return await self._answer(request, job, lease)
        except QueueFull:
            return error_response(503, BUSY)

    async def _load_or_unload(self, job: _Job) -> web.Response:
        if job.keep_alive == 0:
            self._scheduler.unload(job.name)
            reason = "unload"
        else:
            await self._scheduler.load(job.name, job.keep_alive)
            reason = "load"
        return json_response({**_head(job, ""), "done": True, "done_reason": reason})

    async def _answer(self, request: web.Request, job: _Job, lease: Lease) -> web.StreamResponse:
        cfg = self.config
        uncached = max(1, len(job.prompt) - lease.cached)
        t0 = time.perf_counter_ns()
        if cfg.prompt_tokens_per_s > 0:
            await asyncio.sleep(uncached / cfg.prompt_tokens_per_s)
        thinking = (
            answer_tokens("think:" + job.seed, max(1, cfg.default_tokens // 2)) if job.think else []
        )
        content, reason = self._content(job)
        generated = token_ids("".join(thinking) + "".join(content))
        lease.remember(job.prompt + generated)
        counts = {
            "load_duration": int(lease.load_duration * 1e9),
            "prompt_eval_count": uncached,
            "prompt_eval_duration": max(1, time.perf_counter_ns() - t0),
            "eval_count": len(thinking) + len(content) + (job.tool is not None),
        }
        if job.stream:
            lines = _chunks(job, thinking, content)
            return await self._stream(request, job, lines, reason, counts, generated)
        t1 = time.perf_counter_ns()
        if cfg.tokens_per_s > 0:
            await asyncio.sleep(counts["eval_count"] / cfg.tokens_per_s)
        counts["eval_duration"] = max(1, time.perf_counter_ns() - t1)
        out = _final(job, reason, counts, "".join(content), generated)
        if thinking:
            (out["message"] if job.chat else out)["thinking"] = "".join(thinking)
        return json_response(out)

    def _content(self, job: _Job) -> tuple[list[str], str]:
        if job.tool is not None:
            return [], "stop"
        n = self.config.default_tokens if job.num_predict is None else job.num_predict
        if job.json_format is None:
            return answer_tokens(job.seed, n), "stop" if job.num_predict is None else "length"
        tokens = json_tokens(job.json_format, answer_tokens(job.seed, self.config.default_tokens))
        if job.num_predict is not None and n < len(tokens):
            return tokens[:n], "length"  # cut short, invalid JSON, as a real model's would be
        return tokens, "stop"

    async def _stream(
        self,
        request: web.Request,
        job: _Job,
        lines: Iterator[bytes],
        reason: str,
        counts: dict[str, int],
        generated: list[int],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=NDJSON)
        await resp.prepare(request)
        rate = self.config.tokens_per_s
        t1 = time.perf_counter_ns()
        start = time.perf_counter()
        sent = 0
        for line in lines:
            if rate > 0:
                # Against a deadline, so sleep overshoot does not add up over a long answer.
                delay = start + (sent + 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not await self._send(request, resp, sent, line):
                return resp
            sent += 1
        counts["eval_duration"] = max(1, time.perf_counter_ns() - t1)
        # Streamed text and tool calls are not repeated: Ollama's final chunk carries only
        # what its parser found in that last piece (server/routes.go, ChatHandler).
        final = _final(job, reason, counts, "", generated, streamed=True)
        await self._send(request, resp, sent, orjson.dumps(final) + b"\n")
        return resp

    async def _send(
        self, request: web.Request, resp: web.StreamResponse, sent: int, line: bytes
    ) -> bool:
        """Write one line as its own chunk; False when the stream has to end here."""
        faults = self.faults
        stall = faults.hang_after_chunks
        while stall is not None and sent >= stall:  # polled, like hang_before_first_byte
            await asyncio.sleep(_FAULT_POLL_S)
            stall = faults.hang_after_chunks
        if faults.kill_after_chunks is not None and sent >= faults.kill_after_chunks:
            if request.transport is not None:
                request.transport.abort()
            return False
        try:
            await resp.write(line)
        except ConnectionError:  # the client left between two tokens
            return False
        return True

    async def _embed(self, request: web.Request, legacy: bool) -> web.Response:
        started_ns = time.perf_counter_ns()
        refusal = await self._refusal()
        if refusal is not None:
            return refusal
        body = await read_object(request)
        model = model_of(body)
        name = self._known(model)
        raw = body.get("prompt" if legacy else "input")
        texts = [raw] if isinstance(raw, str) else [] if raw is None else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a list of strings")
        texts = [t for t in texts if t]
        prompt = [t for text in texts for t in token_ids(text)]
        try:
            async with self._scheduler.lease(name, prompt, _keep_alive(body)) as lease:
                uncached = max(1, len(prompt) - lease.cached)
                if self.config.prompt_tokens_per_s > 0:
                    await asyncio.sleep(uncached / self.config.prompt_tokens_per_s)
                vectors = [embedding(t, self.config.embedding_dim) for t in texts]
        except QueueFull:
            return error_response(503, BUSY)
        if legacy:
            return json_response({"embedding": vectors[0] if vectors else []})
        return json_response(
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": time.perf_counter_ns() - started_ns,
                "load_duration": int(lease.load_duration * 1e9),
                "prompt_eval_count": len(prompt),
            }
        )

    # -- Anthropic's Messages API (Ollama 0.14.0 and later) ---------------------------

    def _messages_routes(self) -> list[web.AbstractRouteDef]:
        """``/v1/messages`` from 0.14.0 on; an older box answers 404, as a real one does.
        Like Ollama's, it is ``/api/chat`` underneath, so the model answers the same."""
        if _version(self.config.version) < _MESSAGES_SINCE:
            return []
        return [web.post("/v1/messages", self._messages)]

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        refusal = await self._refusal()
        if refusal is not None:
            message = BUSY if refusal.status == 503 else "simulated failure"
            return json_response(messages_error(refusal.status, message), refusal.status)
        try:
            doc = chat_request(await read_object(request), default_max=None)
            body = {k: v for k, v in doc.items() if k not in ("max_tokens", "reasoning_effort")}
            if "max_tokens" in doc:
                body["options"] = {"num_predict": doc["max_tokens"]}
            job = _Job(body, True, started_ns)
        except (ApiError, MessagesError) as exc:
            return json_response(messages_error(400, str(exc)), 400)
        if job.name not in self.store.models:
            message = f"model '{job.model}' not found"
            return json_response(messages_error(404, message), 404)
        try:
            async with self._scheduler.lease(job.name, job.prompt, job.keep_alive) as lease:
                reply = self._reply(job, lease)
                if not job.stream:
                    await self._decode(reply.output_tokens)
                    return json_response(reply.message())
                return await self._stream_events(request, reply.events())
        except QueueFull:
            return json_response(messages_error(503, BUSY), 503)

    def _reply(self, job: _Job, lease: Lease) -> Reply:
        cfg = self.config
        thinking = (
            answer_tokens("think:" + job.seed, max(1, cfg.default_tokens // 2)) if job.think else []
        )
        content, reason = self._content(job)
        generated = token_ids("".join(thinking) + "".join(content))
        uncached = max(1, len(job.prompt) - lease.cached)
        lease.remember(job.prompt + generated)
        calls: list[tuple[str, str, dict[str, Any]]] = []
        if job.tool is not None:
            calls.append((f"call_{zlib.crc32((job.seed + job.tool).encode()):08x}", job.tool, {}))
        output = len(thinking) + len(content) + len(calls)
        ident = f"msg_{zlib.crc32((job.model + job.seed).encode()):08x}"  # same ask, same bytes
        return Reply(job.model, thinking, content, calls, reason, uncached, output, ident)

    async def _decode(self, tokens: int) -> None:
        if self.config.tokens_per_s > 0 and tokens:
            await asyncio.sleep(tokens / self.config.tokens_per_s)

    async def _stream_events(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE)
        await resp.prepare(request)
        rate = self.config.tokens_per_s
        for sent, chunk in enumerate(events):
            if rate > 0 and sent:
                await asyncio.sleep(1 / rate)
            if not await self._send(request, resp, sent, chunk):
                break
        return resp


_MESSAGES_SINCE = (0, 14, 0)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("-")[0].split("."))


def _head(job: _Job, text: str) -> dict[str, Any]:
    if job.chat:
        return {"model": job.model, "created_at": _now(), "message": _message(text)}
    return {"model": job.model, "created_at": _now(), "response": text}


def _message(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def _final(
    job: _Job,
    reason: str,
    counts: dict[str, int],
    text: str,
    generated: list[int],
    *,
    streamed: bool = False,
) -> dict[str, Any]:
    out = _head(job, text)
    if job.tool is not None and not streamed:
        out["message"]["tool_calls"] = _tool_calls(job.tool)
    out.update(done=True, done_reason=reason)
    if not job.chat:
        out["context"] = job.prompt + generated
    out["total_duration"] = time.perf_counter_ns() - job.started_ns
    out.update(counts)
    return out


def _tool_calls(name: str) -> list[dict[str, Any]]:
    return [{"function": {"name": name, "arguments": {}}}]


def _chunks(job: _Job, thinking: list[str], content: list[str]) -> Iterator[bytes]:
    if job.chat:
        for tok in thinking:
            yield _line(job.model, {"message": _message("", thinking=tok)})
        if job.tool is not None:
            yield _line(job.model, {"message": _message("", tool_calls=_tool_calls(job.tool))})
        for tok in content:
            yield _line(job.model, {"message": _message(tok)})
    else:
        for tok in thinking:
            yield _line(job.model, {"response": "", "thinking": tok})
        for tok in content:
            yield _line(job.model, {"response": tok})


def _line(model: str, fields: dict[str, Any]) -> bytes:
    return orjson.dumps({"model": model, "created_at": _now(), **fields, "done": False}) + b"\n"


def _keep_alive(body: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc


# -- command line ---------------------------------------------------------------------


_FLAGS = {"preloaded": "--preload", "version": "--ollama-version"}


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _config_from_args(argv: list[str] | None) -> tuple[SimConfig, str, int]:
    """One flag per SimConfig field (lists comma-separated), plus --host and --port."""
    parser = argparse.ArgumentParser(
        prog="python -m ollamux.backends.sim.ollama", description="Serve one simulated Ollama box."
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=11434)
    defaults = SimConfig()
    for f in fields(SimConfig):
        default = getattr(defaults, f.name)
        kind = _names if isinstance(default, list) else type(default)
        flag = _FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        parser.add_argument(flag, dest=f.name, type=kind, default=default)
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    for key in ("num_parallel", "max_loaded", "max_queue"):
        if args[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {args[key]}")
    return SimConfig(**args), host, port


async def _serve(config: SimConfig, host: str, port: int) -> None:
    box = SimBox(config)
    url = await box.start(host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    print(f"simulated box {config.name} listening on {url}", flush=True)
    try:
        await stopping.wait()
    finally:
        await box.stop()


def main(argv: list[str] | None = None) -> None:
    config, host, port = _config_from_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop  # a benchmark baseline should not be slowed by the default loop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(config, host, port))


if __name__ == "__main__":
    main()
