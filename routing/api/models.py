"""Ollama's model-management API for many boxes: ``/api/pull``, ``/api/push``,
``/api/create`` with ``HEAD``/``POST /api/blobs/:digest``, ``/api/copy``,
``/api/delete``, and the unload request (``keep_alive`` 0 with nothing to answer) that
``/api/generate`` and ``/api/chat`` hand over.

Which boxes, and what their answers mean: ``backends.model_ops.fleet``; talking to them:
``backends.model_ops.io``. A streamed call that goes to one box is relayed bytes through;
otherwise ollamux composes the answer. Every answer carries ``X-Ollamux-Endpoint``: the
boxes the call went to. After anything that changes a box's models, its model list is
probed again before the last byte of the answer, so the next request sees the change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ollamux.backends.model_ops import fleet
from ollamux.backends.model_ops import io as fleet_io
from ollamux.backends.model_ops.fleet import HEADER, BoxResult, Progress
from ollamux.backends.relay import Exchange, Fixed, Message, Receive, Scope, Send, Target
from ollamux.backends.upstream import Response as BoxResponse
from ollamux.backends.upstream import request_headers
from ollamux.routing.api.body import read_json, require_model
from ollamux.routing.api.forward import services
from ollamux.routing.api.services import Services
from ollamux.routing.errors import BadRequest, ModelNotFound, ProxyError

Refresh = Callable[[], Awaitable[None]]


def _json(content: Any, status: int = 200, boxes: Sequence[str] = ()) -> Response:
    return Response(orjson.dumps(content), status, _headers(boxes), "application/json")


def _headers(boxes: Sequence[str]) -> dict[str, str]:
    return {HEADER: ",".join(boxes)}


def _model(doc: dict[str, Any]) -> str:
    return require_model(doc, "model" if "model" in doc else "name")  # "name": older clients


def _failed(error: ProxyError | None, boxes: Sequence[str]) -> ProxyError:
    assert error is not None
    error.headers = {**error.headers, **_headers(boxes)}
    return error


def _call(svc: Services, request: Request, box: str, body: bytes | None = None) -> fleet_io.Call:
    ep = svc.endpoints[box]
    url = ep.url + request.url.path
    return fleet_io.Call(box, request.method, url, _forwarded(request, ep.api_key), body)


def _forwarded(request: Request, api_key: str | None) -> dict[str, str]:
    client = {k: v for k, v in request.headers.items() if k != HEADER}
    return request_headers(client, api_key)


def _refresher(svc: Services, boxes: Sequence[str]) -> Refresh:
    async def refresh() -> None:
        await asyncio.gather(*(svc.prober.tick(box, models=True) for box in boxes))

    return refresh


# -- pull, push, create: progress -------------------------------------------------------


async def pull(request: Request) -> Any:
    body, doc = await read_json(request)
    model = _model(doc)
    svc = services(request)
    boxes = fleet.ollama_boxes(svc.prober.fleet, request.headers.get(HEADER), "pull")
    return await _progress(request, "pull", model, boxes, body, doc)


async def push(request: Request) -> Any:
    """From one box: the one the header names, else the first that has the model."""
    body, doc = await read_json(request)
    model = _model(doc)
    svc = services(request)
    header = request.headers.get(HEADER)
    if header is not None:
        boxes = fleet.ollama_boxes(svc.prober.fleet, header, "push")
        if len(boxes) != 1:
            raise BadRequest("a push goes from one box: name one in X-Ollamux-Endpoint")
    else:
        boxes = fleet.holders(svc.prober.fleet, svc.model_key(model))[:1]
        if not boxes:
            raise ModelNotFound(f'model "{model}" not found')
    return await _progress(request, "push", model, boxes, body, doc, refresh=False)


async def create(request: Request) -> Any:
    """On the boxes the blobs went to (the header's, else every Ollama box up); a model
    made only ``from`` another goes where that one is."""
    body, doc = await read_json(request)
    model = _model(doc)
    svc = services(request)
    header, base = request.headers.get(HEADER), doc.get("from")
    if header is None and isinstance(base, str) and not doc.get("files"):
        boxes = fleet.holders(svc.prober.fleet, svc.model_key(base))
        if not boxes:
            raise ModelNotFound(f'model "{base}" not found')
    else:
        boxes = fleet.ollama_boxes(svc.prober.fleet, header, "create")
    return await _progress(request, "create", model, boxes, body, doc)


async def _progress(
    request: Request,
    verb: str,
    model: str,
    boxes: Sequence[str],
    body: bytes,
    doc: dict[str, Any],
    *,
    refresh: bool = True,
) -> Any:
    """One box, streamed: bytes through. Otherwise every box is asked for its stream
    (a whole answer would come only at the end, after any time-out) and ollamux answers:
    the merged stream, or with ``stream: false`` one object."""
    svc = services(request)
    after = _refresher(svc, boxes) if refresh else None
    stream = doc.get("stream") is not False
    if stream and len(boxes) == 1:
        return _relay(svc, request, boxes[0], model, body, after)
    sent = orjson.dumps({**doc, "stream": True})
    calls = [_call(svc, request, box, sent) for box in boxes]
    opened = await fleet_io.open_all(svc.upstream, calls)
    progress = Progress(verb, boxes)
    early = [progress.fail(r) for r in opened if isinstance(r, BoxResult)]
    responses = [r for r in opened if not isinstance(r, BoxResult)]
    if not responses:  # nothing started anywhere: answer with the boxes' own status
        raise _failed(progress.error(), boxes)
    lines = _lines(early, responses, progress, after)
    if stream:
        return fleet_io.ProgressStream(lines, responses, _headers(boxes))
    async with contextlib.aclosing(lines) as each:
        async for _ in each:
            pass
    error = progress.error()
    if error is not None:
        raise _failed(error, boxes)
    return _json({"status": "success"}, boxes=boxes)


async def _lines(
    early: list[dict[str, Any]],
    responses: Sequence[BoxResponse],
    progress: Progress,
    after: Refresh | None,
) -> AsyncGenerator[dict[str, Any], None]:
    for line in early:
        yield line
    async with contextlib.aclosing(fleet_io.merged(responses, progress)) as merged:
        async for line in merged:
            yield line
    if after is not None:
        await after()
    yield progress.final()


def _relay(
    svc: Services, request: Request, box: str, model: str, body: bytes, after: Refresh | None
) -> Any:
    ep = svc.endpoints[box]
    target = Target(box, ep.url + request.url.path, ep.api_key, body)
    exchange = Exchange(
        svc.upstream,
        Fixed(target, failed=svc.prober.poke),
        method="POST",
        headers={k: v for k, v in request.headers.items() if k != HEADER},
        model=model,
        path=request.url.path,
    )
    return exchange if after is None else _RefreshFirst(exchange, after)


class _RefreshFirst:
    """Holds back the last message of a relayed answer until ``refresh`` has run."""

    def __init__(self, app: Exchange, refresh: Refresh) -> None:
        self._app = app
        self._refresh = refresh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                await self._refresh()
            await send(message)

        await self._app(scope, receive, sending)


# -- copy, delete ---------------------------------------------------------------------


async def copy(request: Request) -> Response:
    body, doc = await read_json(request)
    source = require_model(doc, "source")
    require_model(doc, "destination")
    return await _everywhere(request, "copy", source, body)


async def delete(request: Request) -> Response:
    body, doc = await read_json(request)
    return await _everywhere(request, "delete", _model(doc), body)


async def _everywhere(request: Request, verb: str, model: str, body: bytes) -> Response:
    """On every Ollama box up (a box without the model answers 404: nothing to do
    there), or the named ones; a box that is down but had the model is a failure."""
    svc = services(request)
    header = request.headers.get(HEADER)
    boxes = fleet.ollama_boxes(svc.prober.fleet, header, verb)
    down = () if header is not None else fleet.down_with(svc.prober.fleet, svc.model_key(model))
    calls = [_call(svc, request, box, body) for box in boxes]
    results = await fleet_io.call_all(svc.upstream, calls)
    results += [fleet.unreached(box, 503, f"box {box} is down") for box in down]
    await _refresher(svc, boxes)()
    return _answer(verb, model, results, missing_ok=True)


def _answer(verb: str, model: str, results: Sequence[BoxResult], *, missing_ok: bool) -> Response:
    """One box's answer as it gave it; several boxes' as their verdict."""
    boxes = [r.box for r in results]
    if len(results) == 1 and results[0].answered:
        only = results[0]
        return Response(only.body, only.status, _headers(boxes), only.content_type or None)
    error = fleet.verdict(verb, model, results, missing_ok=missing_ok)
    if error is not None:
        raise _failed(error, boxes)
    created = any(r.status == 201 for r in results)
    return _json({"status": "success"}, 201 if created else 200, boxes)


# -- blobs ----------------------------------------------------------------------------


async def blob(request: Request) -> Response:
    """``HEAD``: 200 when every target box has the blob, else 404 (so the client uploads
    it). ``POST``: sent to the target boxes that lack it (one copy of the body in memory,
    whatever the number of boxes; never parsed)."""
    svc = services(request)
    fleet.check_digest(request.path_params["digest"])
    boxes = fleet.ollama_boxes(svc.prober.fleet, request.headers.get(HEADER), "a blob upload")
    heads = await fleet_io.call_all(svc.upstream, [_head(svc, request, box) for box in boxes])
    if request.method == "HEAD":
        return _blob_found(heads)
    lacking = [r.box for r in heads if r.status == 404]
    results = [r for r in heads if r.status != 404]
    if lacking:
        data = await request.body()
        uploads = [_call(svc, request, box, data) for box in lacking]
        results += await fleet_io.call_all(svc.upstream, uploads)
    return _answer("blob upload", "", results, missing_ok=False)


def _head(svc: Services, request: Request, box: str) -> fleet_io.Call:
    call = _call(svc, request, box)
    return fleet_io.Call(box, "HEAD", call.url, _without_body(call.headers))


def _without_body(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("content-type", "transfer-encoding")}


def _blob_found(results: Sequence[BoxResult]) -> Response:
    boxes = [r.box for r in results]
    if all(r.ok for r in results):
        return Response(status_code=200, headers=_headers(boxes))
    if any(r.status == 404 for r in results):
        return Response(status_code=404, headers=_headers(boxes))
    raise _failed(fleet.verdict("blob check", "", results), boxes)


# -- unload through /api/generate and /api/chat ---------------------------------------


async def unload(request: Request, doc: dict[str, Any], model: str) -> Response:
    """Ollama's unload request, for the whole fleet: the model is unloaded everywhere it
    is (or on the boxes the header names), and the answer is Ollama's."""
    svc = services(request)
    key = svc.model_key(model)
    header = request.headers.get(HEADER)
    current = svc.prober.fleet
    if header is not None:
        boxes = fleet.named(current, header)
    else:
        boxes = fleet.unload_boxes(current, key)
        if not boxes and not current.knows(key):
            raise ModelNotFound(f'model "{model}" not found, try pulling it first')
    results = await asyncio.gather(*(fleet_io.unload_model(svc, box, model) for box in boxes))
    error = fleet.verdict("unload", model, results, missing_ok=True)
    if error is not None:
        raise _failed(error, boxes)
    return _json(fleet.unloaded(model, request.url.path == "/api/chat"), boxes=boxes)


routes: list[BaseRoute] = [
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/push", push, methods=["POST"]),
    Route("/api/create", create, methods=["POST"]),
    Route("/api/copy", copy, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
    Route("/api/blobs/{digest}", blob, methods=["HEAD", "POST"]),
]
