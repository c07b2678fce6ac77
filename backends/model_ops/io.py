"""Model management on several boxes at once, the I/O: one call to each box at the same
time (``call_all``, ``open_all``), several boxes' NDJSON progress merged as it comes
(``merged``) and relayed to the client (``ProgressStream``), and loading or unloading a
model on one box the way its kind does it (``load_model``, ``unload_model``).

What the answers mean is decided in ``backends.model_ops.fleet``; here nothing is parsed but
progress lines, and a client that hangs up closes every box's connection, so the boxes
stop what they were doing for it, as they would for a client of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ollamux.backends.kinds import probe_headers
from ollamux.backends.model_ops.fleet import BoxResult, Progress, answer, unreached
from ollamux.backends.prober import Prober
from ollamux.backends.relay import Receive, Scope, Send
from ollamux.backends.translate.common import LineReader
from ollamux.backends.translate.models import own_id
from ollamux.backends.upstream import Response, Upstream
from ollamux.routing.errors import UpstreamError
from ollamux.routing.settings import Endpoint

_QUEUE = 64  # progress lines buffered between the boxes and the client


@dataclass(frozen=True, slots=True)
class Call:
    """One request to one box."""

    box: str
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None = None  # one bytes object may go to many boxes: it is never copied


async def call_one(up: Upstream, call: Call) -> BoxResult:
    """Send one call and read its whole answer."""
    try:
        return await _whole(call, await _send(up, call))
    except UpstreamError as exc:
        return unreached(call.box, exc.status, exc.message)


async def _whole(call: Call, resp: Response) -> BoxResult:
    try:
        body = await resp.read()
    finally:
        resp.close()
    return answer(call.box, resp.status, resp.content_type, body)


async def call_all(up: Upstream, calls: Sequence[Call]) -> list[BoxResult]:
    return list(await asyncio.gather(*(call_one(up, c) for c in calls)))


async def open_all(up: Upstream, calls: Sequence[Call]) -> list[Response | BoxResult]:
    """Send every call; a box that answered 2xx gives its unread response, any other
    answer (read whole) or failure a result."""

    async def one(call: Call) -> Response | BoxResult:
        try:
            resp = await _send(up, call)
            return resp if 200 <= resp.status < 300 else await _whole(call, resp)
        except UpstreamError as exc:
            return unreached(call.box, exc.status, exc.message)

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def _send(up: Upstream, call: Call) -> Response:
    return await up.send(call.box, call.method, call.url, headers=call.headers, body=call.body)


# -- progress ---------------------------------------------------------------------------


async def lines(resp: Response) -> AsyncIterator[Any]:
    """A box's answer as JSON values: each NDJSON line, or the one body it sent whole."""
    reader = LineReader()
    if not resp.streaming:
        yield from_whole(await resp.read())
        return
    async for chunk in resp.chunks():
        for doc in reader.feed(chunk):
            yield doc
    for doc in reader.rest():
        yield doc


def from_whole(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"error": "the box answered with something that is not JSON"}


async def merged(
    responses: Sequence[Response], progress: Progress
) -> AsyncGenerator[dict[str, Any], None]:
    """The client's progress lines from several boxes' streams, as they come."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(_QUEUE)

    async def read(resp: Response) -> None:
        try:
            async for doc in lines(resp):
                if isinstance(doc, dict):
                    await queue.put((resp.box, doc))
        except UpstreamError as exc:
            await queue.put((resp.box, exc))
        else:
            await queue.put((resp.box, None))
        finally:
            resp.close()

    readers = [asyncio.create_task(read(r)) for r in responses]
    try:
        live = len(readers)
        while live:
            box, item = await queue.get()
            if item is None:
                live -= 1
                out = progress.end(box)
            elif isinstance(item, UpstreamError):
                live -= 1
                out = progress.fail(unreached(box, item.status, item.message))
            else:
                out = progress.line(box, item)
            if out is not None:
                yield out
    finally:
        for task in readers:
            task.cancel()
        for resp in responses:
            resp.close()


class ProgressStream:
    """An NDJSON response of progress lines. A client that hangs up closes the boxes'
    connections (so they stop), and they are closed however the response ends."""

    def __init__(
        self,
        body: AsyncGenerator[dict[str, Any], None],
        responses: Sequence[Response],
        headers: Mapping[str, str],
    ) -> None:
        self._body = body
        self._responses = responses
        self._headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        headers = [(b"content-type", b"application/x-ndjson"), *self._headers]
        try:
            async with contextlib.aclosing(self._body) as body:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                async for line in body:
                    data = orjson.dumps(line) + b"\n"
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass  # the client went away
        finally:
            watcher.cancel()
            self._close()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._close()

    def _close(self) -> None:
        for resp in self._responses:
            resp.close()


# -- load and unload --------------------------------------------------------------------


class Boxes(Protocol):
    """What loading and unloading need of the running proxy (``Services`` has it)."""

    @property
    def upstream(self) -> Upstream: ...

    @property
    def endpoints(self) -> Mapping[str, Endpoint]: ...

    @property
    def prober(self) -> Prober: ...

    def model_key(self, name: str) -> str: ...


async def load_model(
    boxes: Boxes, box: str, model: str, *, keep_alive: float | str | None = None
) -> BoxResult:
    """Load ``model`` on ``box``: an Ollama box gets Ollama's load request (a generate
    without prompt, with ``keep_alive`` if given; sent even when it is loaded, which
    renews its keep-alive), a llama-server in router mode ``POST /models/load``. A
    model a llama-server or OpenAI-compatible box already holds is left as it is. The
    box's loaded models are probed again before returning."""
    return await _switch(boxes, box, model, load=True, keep_alive=keep_alive)


async def unload_model(boxes: Boxes, box: str, model: str) -> BoxResult:
    """Unload ``model`` from ``box``: Ollama's generate with ``keep_alive`` 0, or a
    llama-server's ``POST /models/unload``; probed again before returning."""
    return await _switch(boxes, box, model, load=False)


async def _switch(
    boxes: Boxes, box: str, model: str, *, load: bool, keep_alive: float | str | None = None
) -> BoxResult:
    ep = boxes.endpoints.get(box)
    state = boxes.prober.fleet.by_name.get(box)
    if ep is None or state is None:
        return unreached(box, 404, f"no box named {box}")
    key = boxes.model_key(model)
    own = own_id(state, key, model)
    headers = {**probe_headers(ep), "content-type": "application/json"}
    doc: dict[str, Any] = {"model": own}
    if ep.kind == "ollama":
        if not load or keep_alive is not None:
            doc["keep_alive"] = 0 if not load else keep_alive
        call = Call(box, "POST", f"{ep.url}/api/generate", headers, orjson.dumps(doc))
    elif load and key in state.loaded:
        # A llama-server keeps a loaded model until it needs the room (a single-model one
        # its only model), and an OpenAI-compatible box holds every model it lists.
        return BoxResult(box, 200)
    elif ep.kind == "llama-server":
        path = "/models/load" if load else "/models/unload"
        call = Call(box, "POST", ep.url + path, headers, orjson.dumps(doc))
    else:
        return unreached(box, 400, f"box {box} is OpenAI-compatible: it loads models itself")
    result = await call_one(boxes.upstream, call)
    await boxes.prober.tick(box, models=False)  # so /api/ps and the dashboard see it now
    return result
