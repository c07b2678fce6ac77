"""The simulated Ollama box's model store: the models it has on disk and the blobs
uploaded to it, changed through Ollama's management routes as docs/api.md describes them.

- ``POST /api/pull``: ``pulling manifest``, then per layer a ``pulling <digest>`` line
  without ``completed`` and lines with growing ``completed`` (spread over
  ``pull_time``), then ``verifying sha256 digest``, ``writing manifest``, ``removing any
  unused layers``, ``success``. ``pull_error`` makes it fail after the first layer.
- ``POST /api/push``: ``retrieving manifest``, ``starting upload`` and ``pushing`` per
  layer, ``pushing manifest``, ``success`` (pushed models are kept in ``pushed``).
- ``POST /api/create`` from a model it has (``from``) or from uploaded blobs
  (``files``), ``POST /api/copy``, ``DELETE /api/delete`` (unloading the model too).
- ``HEAD /api/blobs/:digest`` (200 or 404) and ``POST /api/blobs/:digest``: the body is
  read as it arrives and its sha256 checked (201; 200 if the box had it; 400 on a
  mismatch).

Progress routes stream NDJSON unless ``stream`` is false; then one object, or the
error with status 500 as Ollama answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import orjson
from aiohttp import web

from ollamux.backends.sim.engine import digest, size_bytes
from ollamux.backends.sim.http import (
    NDJSON,
    ApiError,
    guard,
    json_response,
    model_of,
    normalize,
    read_object,
)

_STEPS = 4  # progress lines per layer of a pull
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_EXTRAS = ("template", "system", "parameters", "license", "messages", "adapters")

Line = dict[str, Any]


class Knobs(Protocol):
    """What the store reads live from the box's config and fault switches."""

    pull_time: float


class PullFaults(Protocol):
    pull_error: str | None


def layers(name: str) -> list[tuple[str, int]]:
    """The blobs a model is made of (weights, template, parameters): digest and size."""
    crc = zlib.crc32(name.encode())
    parts = (("", size_bytes(name)), ("#template", 1_200 + crc % 500), ("#params", 100 + crc % 50))
    return [(f"sha256:{digest(name + part)}", size) for part, size in parts]


def blob_digest(text: str) -> str:
    match = _DIGEST.fullmatch(text)
    if match is None:
        raise ApiError(400, "invalid digest format")
    return f"sha256:{match.group(1).lower()}"


class Store:
    def __init__(
        self,
        models: Iterable[str],
        knobs: Knobs,
        faults: PullFaults,
        unload: Callable[[str], None],
    ) -> None:
        self.models: dict[str, None] = dict.fromkeys(normalize(m) for m in models)
        self.blobs: dict[str, int] = {}  # digest -> size
        self.pushed: list[str] = []
        self._knobs = knobs
        self._faults = faults
        self._unload = unload

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/pull", guard(self._pull)),
            web.post("/api/push", guard(self._push)),
            web.post("/api/create", guard(self._create)),
            web.post("/api/copy", guard(self._copy)),
            web.delete("/api/delete", guard(self._delete)),
            web.head("/api/blobs/{digest}", guard(self._has_blob)),
            web.post("/api/blobs/{digest}", guard(self._put_blob)),
        ]

    def _known(self, model: str) -> str:
        name = normalize(model)
        if name not in self.models:
            raise ApiError(404, f"model '{model}' not found")
        return name

    # -- progress routes ----------------------------------------------------------

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request)
        name = normalize(model_of(body, legacy=True))
        return await _progress(request, body, self._pull_lines(name))

    async def _pull_lines(self, name: str) -> AsyncIterator[Line]:
        yield {"status": "pulling manifest"}
        have = name in self.models
        parts = layers(name)
        steps = 1 if have else _STEPS
        pause = 0.0 if have else self._knobs.pull_time / (len(parts) * steps)
        for i, (blob, size) in enumerate(parts):
            head = {"status": f"pulling {blob[7:19]}", "digest": blob, "total": size}
            yield head
            for step in range(1, steps + 1):
                if pause > 0:
                    await asyncio.sleep(pause)
                yield {**head, "completed": size * step // steps}
            if i == 0 and self._faults.pull_error is not None:
                yield {"error": self._faults.pull_error}
                return
        for status in ("verifying sha256 digest", "writing manifest"):
            yield {"status": status}
        self.models[name] = None
        yield {"status": "removing any unused layers"}
        yield {"status": "success"}

    async def _push(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request)
        name = self._known(model_of(body, legacy=True))
        return await _progress(request, body, self._push_lines(name))

    async def _push_lines(self, name: str) -> AsyncIterator[Line]:
        yield {"status": "retrieving manifest"}
        for blob, size in layers(name):
            yield {"status": "starting upload", "digest": blob, "total": size}
            pushing = {"status": f"pushing {blob[7:19]}", "digest": blob, "total": size}
            yield pushing
            yield {**pushing, "completed": size}
        yield {"status": "pushing manifest"}
        self.pushed.append(name)
        yield {"status": "success"}

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request)
        name = normalize(model_of(body, legacy=True))
        files = body.get("files") or {}
        base = body.get("from")
        if not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values()):
            raise ApiError(400, "files must map file names to blob digests")
        for blob in files.values():
            if blob_digest(blob) not in self.blobs:
                raise ApiError(400, f"blob {blob} not found: upload it first")
        if base is not None and not isinstance(base, str):
            raise ApiError(400, "from must be a string")
        if base is None and not files:
            raise ApiError(400, "neither 'from' or 'files' was specified")
        used = [blob_digest(d) for d in files.values()]
        if base is not None:
            used += [blob for blob, _ in layers(self._known(base))]
        extras = [key for key in _EXTRAS if body.get(key)]
        return await _progress(request, body, self._create_lines(name, used, extras, bool(files)))

    async def _create_lines(
        self, name: str, used: list[str], extras: list[str], parse: bool
    ) -> AsyncIterator[Line]:
        if parse:
            yield {"status": "parsing GGUF"}
        for blob in used:
            yield {"status": f"using existing layer {blob}"}
        for key in extras:
            yield {"status": f"creating new layer sha256:{digest(name + '#' + key)}"}
        yield {"status": "writing manifest"}
        self.models[name] = None
        yield {"status": "success"}

    # -- plain routes -------------------------------------------------------------

    async def _copy(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not source:
            raise ApiError(400, "source is required")
        if not isinstance(destination, str) or not destination:
            raise ApiError(400, "destination is required")
        if normalize(source) not in self.models:
            raise ApiError(404, f'model "{source}" not found')
        self.models[normalize(destination)] = None
        return web.Response(status=200)

    async def _delete(self, request: web.Request) -> web.Response:
        name = self._known(model_of(await read_object(request), legacy=True))
        del self.models[name]
        self._unload(name)
        return web.Response(status=200)

    async def _has_blob(self, request: web.Request) -> web.Response:
        blob = blob_digest(request.match_info["digest"])
        if blob not in self.blobs:
            raise ApiError(404, f'blob "{blob}" not found')
        return web.Response(status=200)

    async def _put_blob(self, request: web.Request) -> web.Response:
        blob = blob_digest(request.match_info["digest"])
        if blob in self.blobs:
            return web.Response(status=200)
        hasher, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            hasher.update(chunk)
            size += len(chunk)
        got = f"sha256:{hasher.hexdigest()}"
        if got != blob:
            raise ApiError(400, f'digest mismatch, expected "{blob}", got "{got}"')
        self.blobs[blob] = size
        return web.Response(status=201)


async def _progress(
    request: web.Request, body: dict[str, Any], lines: AsyncIterator[Line]
) -> web.StreamResponse:
    """Lines as NDJSON, or with ``stream: false`` the last one (an error: status 500)."""
    if body.get("stream") is False:
        last: Line = {}
        async for line in lines:
            if "error" in line:
                raise ApiError(500, str(line["error"]))
            last = line
        return json_response(last)
    resp = web.StreamResponse(headers=NDJSON)
    await resp.prepare(request)
    async for line in lines:
        await resp.write(orjson.dumps(line) + b"\n")
    return resp
