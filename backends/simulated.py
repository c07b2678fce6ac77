"""A simulated Ollama box: a real aiohttp server on loopback that answers like Ollama.

Tests, the demo and the benchmarks put it where a GPU box would be. Its scheduler
(``backends.simbox_scheduler``) loads, evicts, queues and caches like Ollama's, so a
proxy's routing decisions show in its numbers; ``SimBox.faults`` makes it misbehave on
purpose. Benchmarks also use it as the "talk to the box directly" baseline, so the
request path stays lean: no access log, orjson, no work that a flag does not ask for.

    async with SimBox(SimConfig(models=["llama3.2"], num_parallel=2)) as box:
        ...  # box.url is "http://127.0.0.1:PORT"

    python -m backends.simulated --port 11501 --name gpu-a --models llama3.2,qwen2.5:7b
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import math
import random
import re
import signal
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from backends.simbox_scheduler import (
    Lease,
    QueueFull,
    Scheduler,
    SimStats,
    marker,
    parse_keep_alive,
    token_ids,
)

__all__ = ["Faults", "SimBox", "SimConfig", "SimStats", "main", "parse_keep_alive"]

BUSY = "server busy, please try again.  maximum pending requests exceeded"
_FAULT_POLL_S = 0.01  # how often a hanging fault looks whether it was switched off
_SHUTDOWN_S = 0.1  # stop() grants in-flight requests this long before cancelling them
_CONTEXT_LENGTH = 4096
_MODIFIED_AT = "2025-06-01T12:00:00.000000+00:00"
_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven bright stars shine above "
    "quiet hills and rivers carry cold water toward distant seas where ships sail "
    "under grey clouds as birds sing softly in green trees near old stone bridges"
)
_WORDS = _TEXT.split()
_SAMPLES: dict[str, Any] = {
    "integer": 42,
    "number": 4.2,
    "boolean": True,
    "array": [],
    "object": {},
    "null": None,
}
_NDJSON = {"Content-Type": "application/x-ndjson"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class SimConfig:
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


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Job:
    """One parsed /api/chat or /api/generate request."""

    chat: bool
    model: str  # as the client spelled it; Ollama echoes this back
    name: str  # normalised, "name:tag"
    stream: bool
    keep_alive: float | None
    prompt: list[int]
    seed: str
    is_load: bool
    num_predict: int | None
    json_format: Any
    tool: str | None
    think: bool
    started_ns: int


# -- names, metadata, tokens ----------------------------------------------------------


def normalize(name: str) -> str:
    """Ollama's rule: a name without a tag means ":latest" (the tag follows the last "/")."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _family(name: str) -> str:
    match = re.match(r"[a-z]+", name.rsplit("/", 1)[-1].lower())
    return match.group(0) if match else "llama"


def _parameters(name: str) -> float:
    tag = re.search(r"(\d+(?:\.\d+)?)([bm])\b", name.lower())
    if tag:
        return float(tag.group(1)) * (1e9 if tag.group(2) == "b" else 1e6)
    return (1.2e9, 3.2e9, 7.6e9, 8.0e9)[zlib.crc32(name.encode()) % 4]


def _card(name: str) -> dict[str, Any]:
    """The fields /api/tags and /api/ps share."""
    return {
        "name": name,
        "model": name,
        "size": _size(name),
        "digest": _digest(name),
        "details": _details(name),
    }


def _details(name: str) -> dict[str, Any]:
    family = _family(name)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": f"{_parameters(name) / 1e9:.1f}B",
        "quantization_level": "Q4_K_M",
    }


def _size(name: str) -> int:
    # Q4_K_M stores about 0.6 bytes per parameter; the crc keeps equal sizes apart.
    return int(_parameters(name) * 0.6) + zlib.crc32(name.encode()) % 1_000_000


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _words(seed: str, n: int) -> list[str]:
    """n deterministic tokens; each ends with a space except the last."""
    h = zlib.crc32(seed.encode())
    words = [_WORDS[(h + i * (h % 7 + 3)) % len(_WORDS)] for i in range(n)]
    return [w + " " for w in words[:-1]] + words[-1:]


def _json_tokens(fmt: Any, words: list[str]) -> list[str]:
    """A JSON object (shaped by the schema's properties when given) cut into tokens."""
    plain = [w.strip() for w in words] or ["ok"]
    props = fmt.get("properties") if isinstance(fmt, dict) else None
    if not isinstance(props, dict) or not props:
        props = {"answer": {}}
    obj = {}
    for i, (key, spec) in enumerate(props.items()):
        kind = spec.get("type") if isinstance(spec, dict) else None
        text = " ".join(plain[: i + 1] if kind else plain)
        obj[key] = _SAMPLES.get(kind, text) if isinstance(kind, str) else text
    # stdlib json, for its ", " and ": " separators: they give the text several tokens.
    return re.findall(r"\S+\s*", json.dumps(obj))


def _embedding(text: str, dim: int) -> list[float]:
    rng = random.Random(zlib.crc32(text.encode()))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _wall(ts: float) -> str:
    ts = min(ts, time.time() + 100 * 365 * 86400)  # "forever" still needs a date
    return datetime.fromtimestamp(ts).astimezone().isoformat()


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        raise _ApiError(400, "missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _ApiError(400, str(exc)) from exc
    if not isinstance(body, dict):
        raise _ApiError(400, "request body must be a JSON object")
    return body


def _model_of(body: dict[str, Any], *, legacy: bool = False) -> str:
    model = body.get("model") or (body.get("name") if legacy else None)
    if not model or not isinstance(model, str):
        raise _ApiError(400, "model is required")
    return model


def _parse_job(body: dict[str, Any], chat: bool, started_ns: int) -> _Job:
    model = _model_of(body)
    keep_alive = _keep_alive(body)
    options = body.get("options") or {}
    num_predict = options.get("num_predict") if isinstance(options, dict) else None
    if not isinstance(num_predict, int) or isinstance(num_predict, bool) or num_predict < 0:
        num_predict = None  # absent, or Ollama's -1/-2 "until the model stops"
    prompt, seed, is_load, tool = (_chat_prompt if chat else _generate_prompt)(body)
    fmt = body.get("format")
    return _Job(
        chat=chat,
        model=model,
        name=normalize(model),
        stream=body.get("stream") is not False,
        keep_alive=keep_alive,
        prompt=prompt,
        seed=seed,
        is_load=is_load,
        num_predict=num_predict,
        json_format=fmt if fmt == "json" or isinstance(fmt, dict) else None,
        tool=tool,
        think=bool(body.get("think")),
        started_ns=started_ns,
    )


def _images(images: Any) -> list[int]:
    if not isinstance(images, list):
        return []
    return [marker("image:" + str(image)[:64]) for image in images]


def _chat_prompt(body: dict[str, Any]) -> tuple[list[int], str, bool, str | None]:
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _ApiError(400, "messages must be a list of objects")
    tools = body.get("tools")
    functions = [
        t["function"]
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    prompt: list[int] = []
    for fn in functions:
        prompt += [marker("tool"), *token_ids(f"{fn.get('name')} {fn.get('description')}")]
    tool = None
    if functions and messages and messages[-1].get("role") == "user":
        tool = str(functions[0].get("name", "tool"))
    for message in messages:
        prompt.append(marker(str(message.get("role", "user"))))
        prompt += token_ids(str(message.get("content") or ""))
        prompt += _images(message.get("images"))
    prompt.append(marker("assistant"))  # the generation prompt; the answer follows it
    seed = str(messages[-1].get("content") or "") if messages else ""
    return prompt, seed, not messages, tool


def _generate_prompt(body: dict[str, Any]) -> tuple[list[int], str, bool, str | None]:
    text = str(body.get("prompt") or "")
    context = body.get("context")
    prompt = [t for t in context if isinstance(t, int)] if isinstance(context, list) else []
    prompt += (
        token_ids(str(body.get("system") or "")) + token_ids(text) + _images(body.get("images"))
    )
    return prompt, text, not text and not body.get("images"), None


# -- the box --------------------------------------------------------------------------


class SimBox:
    """A simulated Ollama server. ``start()``/``stop()`` may alternate (same port too)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.faults = Faults()
        self.url = ""
        self.port = 0
        self._advertised: dict[str, None] = dict.fromkeys(normalize(m) for m in config.models)
        self._scheduler = Scheduler(config, self.stats)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> SimBox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def add_model(self, name: str) -> None:
        self._advertised[normalize(name)] = None

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
            web.post("/api/show", _guard(self._show)),
            web.post("/api/chat", _guard(partial(self._infer, chat=True))),
            web.post("/api/generate", _guard(partial(self._infer, chat=False))),
            web.post("/api/embed", _guard(partial(self._embed, legacy=False))),
            web.post("/api/embeddings", _guard(partial(self._embed, legacy=True))),
        ]

    # -- metadata routes ----------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"version": self.config.version})

    async def _tags(self, request: web.Request) -> web.Response:
        if self.faults.tags_fail:
            return _error(500, "simulated failure")
        cards = [{**_card(n), "modified_at": _MODIFIED_AT} for n in self._advertised]
        return _json({"models": cards})

    async def _ps(self, request: web.Request) -> web.Response:
        if self.faults.ps_fail:
            return _error(500, "simulated failure")
        cards = [
            {
                **_card(m.name),
                "expires_at": _wall(m.expires_at),
                "size_vram": _size(m.name),
                "context_length": _CONTEXT_LENGTH,
            }
            for m in self._scheduler.loaded()
        ]
        return _json({"models": cards})

    async def _sim_stats(self, request: web.Request) -> web.Response:
        return _json({**self.stats.as_dict(), "loaded": self.loaded_models()})

    async def _show(self, request: web.Request) -> web.Response:
        model = _model_of(await _body(request), legacy=True)
        name = normalize(model)
        if name not in self._advertised:
            raise _ApiError(404, f"model '{model}' not found")
        family = _family(name)
        info = {
            "general.architecture": family,
            "general.parameter_count": int(_parameters(name)),
            f"{family}.context_length": _CONTEXT_LENGTH,
            f"{family}.embedding_length": self.config.embedding_dim,
        }
        return _json(
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
            return _error(503, BUSY)
        if faults.error_status is not None:
            return _error(faults.error_status, "simulated failure")
        # Faults are plain attributes a test flips, so polling is the interface; it only
        # runs while the fault is on. The client leaving cancels the wait.
        while faults.hang_before_first_byte:  # noqa: ASYNC110
            await asyncio.sleep(_FAULT_POLL_S)
        return None

    def _known(self, model: str) -> str:
        name = normalize(model)
        if name not in self._advertised:
            raise _ApiError(404, f'model "{model}" not found, try pulling it first')
        return name

    async def _infer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        refusal = await self._refusal()
        if refusal is not None:
            return refusal
        job = _parse_job(await _body(request), chat, started_ns)
        self._known(job.model)
        if job.is_load:
            return await self._load_or_unload(job)
        try:
            async with self._scheduler.lease(job.name, job.prompt, job.keep_alive) as lease:
                return await self._answer(request, job, lease)
        except QueueFull:
            return _error(503, BUSY)

    async def _load_or_unload(self, job: _Job) -> web.Response:
        if job.keep_alive == 0:
            self._scheduler.unload(job.name)
            reason = "unload"
        else:
            await self._scheduler.load(job.name, job.keep_alive)
            reason = "load"
        return _json({**_head(job, ""), "done": True, "done_reason": reason})

    async def _answer(self, request: web.Request, job: _Job, lease: Lease) -> web.StreamResponse:
        cfg = self.config
        uncached = max(1, len(job.prompt) - lease.cached)
        t0 = time.perf_counter_ns()
        if cfg.prompt_tokens_per_s > 0:
            await asyncio.sleep(uncached / cfg.prompt_tokens_per_s)
        thinking = _words("think:" + job.seed, max(1, cfg.default_tokens // 2)) if job.think else []
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
        return _json(out)

    def _content(self, job: _Job) -> tuple[list[str], str]:
        if job.tool is not None:
            return [], "stop"
        n = self.config.default_tokens if job.num_predict is None else job.num_predict
        if job.json_format is None:
            return _words(job.seed, n), "stop" if job.num_predict is None else "length"
        tokens = _json_tokens(job.json_format, _words(job.seed, self.config.default_tokens))
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
        resp = web.StreamResponse(headers=_NDJSON)
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
        final = _final(job, reason, counts, "", generated)  # streamed text is not repeated
        await self._send(request, resp, sent, orjson.dumps(final) + b"\n")
        return resp

    async def _send(
        self, request: web.Request, resp: web.StreamResponse, sent: int, line: bytes
    ) -> bool:
        """Write one line as its own chunk; False when the stream has to end here."""
        faults = self.faults
        stall = faults.hang_after_chunks
        while stall is not None and sent >= stall:
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
        body = await _body(request)
        model = _model_of(body)
        name = self._known(model)
        raw = body.get("prompt" if legacy else "input")
        texts = [raw] if isinstance(raw, str) else [] if raw is None else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _ApiError(400, "input must be a string or a list of strings")
        texts = [t for t in texts if t]
        prompt = [t for text in texts for t in token_ids(text)]
        try:
            async with self._scheduler.lease(name, prompt, _keep_alive(body)) as lease:
                uncached = max(1, len(prompt) - lease.cached)
                if self.config.prompt_tokens_per_s > 0:
                    await asyncio.sleep(uncached / self.config.prompt_tokens_per_s)
                vectors = [_embedding(t, self.config.embedding_dim) for t in texts]
        except QueueFull:
            return _error(503, BUSY)
        if legacy:
            return _json({"embedding": vectors[0] if vectors else []})
        return _json(
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": time.perf_counter_ns() - started_ns,
                "load_duration": int(lease.load_duration * 1e9),
                "prompt_eval_count": len(prompt),
            }
        )


def _head(job: _Job, text: str) -> dict[str, Any]:
    if job.chat:
        return {"model": job.model, "created_at": _now(), "message": _message(text)}
    return {"model": job.model, "created_at": _now(), "response": text}


def _message(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def _final(
    job: _Job, reason: str, counts: dict[str, int], text: str, generated: list[int]
) -> dict[str, Any]:
    out = _head(job, text)
    if job.tool is not None:
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
        raise _ApiError(400, str(exc)) from exc


def _guard(handler: Handler) -> Handler:
    """Render an _ApiError in Ollama's shape; one place, not one try per handler."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _ApiError as exc:
            return _error(exc.status, exc.message)

    return guarded


# -- command line ---------------------------------------------------------------------


_FLAGS = {"preloaded": "--preload", "version": "--ollama-version"}


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _config_from_args(argv: list[str] | None) -> tuple[SimConfig, str, int]:
    """One flag per SimConfig field (lists comma-separated), plus --host and --port."""
    parser = argparse.ArgumentParser(
        prog="python -m backends.simulated", description="Serve one simulated Ollama box."
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
