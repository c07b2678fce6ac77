"""One proxied exchange, as a raw ASGI response: bytes in, bytes out, lease released once.

The box's status, content type and body reach the client unchanged, chunk by chunk.
Nothing is parsed on the way through; the last two chunks are kept so the final
NDJSON line or SSE event (token counts, timings) can be read once, at the end.

While the exchange waits for the box to answer, a client that hangs up cancels it;
while it streams, a client that hangs up closes the upstream connection, so the box
stops generating. Before the first byte reached the client, a box that cannot be
reached is replaced by the next candidate (``retry``); after it, a broken stream ends
with a last error line in the stream's own framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from ollamux.backends.upstream import Response, Upstream, request_headers
from ollamux.routing.errors import NoCapacity, ProxyError, UpstreamBadAnswer, UpstreamError

log = logging.getLogger("ollamux.relay")
_TAIL = 8192  # enough for any final chunk's counts and timings
_WATCH_AFTER = 0.05  # s: a client that leaves sooner is noticed this late

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Lease(Protocol):
    """What the relay needs of a reservation (routing.ledger.Lease satisfies it)."""

    @property
    def box(self) -> str: ...

    @property
    def reason(self) -> str: ...

    def release(self) -> None: ...


class Translator(Protocol):
    """Turns one API's response into another's (Ollama <-> OpenAI), for boxes that do not
    speak the client's API. Only translation parses a stream; plain relays never do."""

    def content_type(self, status: int, upstream: str) -> str: ...

    def chunk(self, data: bytes) -> bytes: ...  # converted output so far (may be empty)

    def end(self) -> bytes: ...  # whatever is left when the box's stream ends

    def whole(self, status: int, body: bytes) -> bytes: ...  # a body read whole

    def limit_events(self, limit: int) -> None: ...  # the largest line or event buffered


@runtime_checkable
class Breakable(Protocol):
    """A translator whose API has its own way to end a broken stream (the Responses
    API's ``error`` event): it says it, rather than the relay's generic last line."""

    def broken(self, error: ProxyError) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Outbound:
    """What to send to one box for one client request: the box's path and body."""

    path: str
    body: bytes
    translator: Translator | None = None
    # A route the box may not serve (tried bytes through first): given the body of its
    # 404, what to send the same box instead (a translation), or None when the 404 is the
    # answer (the route exists; the model does not). Once the box answers the translation
    # with anything but a 404, it is remembered as lacking ``path`` (``BoxState.lacking``).
    instead: Callable[[bytes], Outbound | None] | None = None


@dataclass(frozen=True, slots=True)
class Target:
    box: str
    url: str  # full URL on the box
    api_key: str | None
    body: bytes
    translator: Translator | None = None
    instead: Callable[[bytes], Target | None] | None = None  # see Outbound.instead
    path: str = ""  # the path on the box (for remembering a route it lacks)


@dataclass(slots=True)
class Outcome:
    """What one exchange did, for totals, metrics and the dashboard."""

    box: str | None
    model: str
    path: str
    status: int = 0
    started: float = field(default_factory=time.monotonic)
    sent: float | None = None  # when the request left for the box that answered
    first_byte: float | None = None
    ended: float | None = None
    tail: bytes = b""  # the last bytes of the body: the final chunk with counts
    error: str | None = None
    client_gone: bool = False
    route: str = ""  # why this box (X-Ollamux-Route)


class Placement(Protocol):
    """What one exchange needs of the scheduler, and what it tells it: the narrow
    interface between the relay and routing (``Services.placement`` makes one per
    request; a fixed target for a call that holds no slot is ``Fixed``)."""

    async def place(self, failed: frozenset[str]) -> tuple[Lease | None, Target]:
        """A box for the request, avoiding those that already failed it; raises a
        ProxyError (404, 503, ...) when there is none. The lease is None for requests
        that hold no slot. May wait (the waiting room); cancelled if the client leaves."""
        ...

    def failed(self, box: str) -> None:
        """The box failed before its answer could be relayed (unreachable, 5xx)."""
        ...

    def model_failed(self, box: str, model: str) -> None:
        """The box named the model in its error: the (box, model) is to blame."""
        ...

    def refused(self, box: str, retry_after: str | None) -> None:
        """The box answered 429."""
        ...

    def lacks(self, box: str, path: str) -> None:
        """The box answered 404 on ``path`` and served its translation: it lacks it."""
        ...

    def done(self, outcome: Outcome) -> None:
        """The exchange is over, whatever became of it (called once)."""
        ...


class Fixed:
    """One box, no slot, nothing to report (model management's relayed calls)."""

    def __init__(self, target: Target, failed: Callable[[str], None]) -> None:
        self._target = target
        self.failed = failed

    async def place(self, failed: frozenset[str]) -> tuple[Lease | None, Target]:
        return None, self._target

    def model_failed(self, box: str, model: str) -> None:
        pass

    def refused(self, box: str, retry_after: str | None) -> None:
        pass

    def lacks(self, box: str, path: str) -> None:
        pass

    def done(self, outcome: Outcome) -> None:
        pass


class Exchanges:
    """The exchanges in flight in one app, so a server going down can end them when its
    grace period is over (``close_all``). An exchange finds it in the lifespan state."""

    def __init__(self) -> None:
        self._live: set[Exchange] = set()

    def __len__(self) -> int:
        return len(self._live)

    def add(self, exchange: Exchange) -> None:
        self._live.add(exchange)

    def discard(self, exchange: Exchange) -> None:
        self._live.discard(exchange)

    def close_all(self, reason: str) -> int:
        live = list(self._live)
        for exchange in live:
            exchange.close(reason)
        return len(live)


class Exchange:
    def __init__(
        self,
        upstream: Upstream,
        placement: Placement,
        *,
        method: str,
        headers: Mapping[str, str],
        model: str,
        path: str,
        max_attempts: int = 1,
        stream_error: Callable[[ProxyError, bytes], bytes] | None = None,
    ) -> None:
        self._up = upstream
        self._placement = placement
        self._lease: Lease | None = None
        self._target: Target | None = None
        self._method = method
        self._headers = headers
        self._max_attempts = max_attempts
        self._stream_error = stream_error  # a broken stream's last bytes, if not the default
        self.outcome = Outcome(box=None, model=model, path=path)
        self._phase = "waiting"
        self._resp: Response | None = None
        self._task: asyncio.Task[Any] | None = None
        self._closing: str | None = None  # why the server ended this exchange early

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        exchanges: Exchanges | None = scope.get("state", {}).get("exchanges")
        if exchanges is not None:
            exchanges.add(self)
        # Most answers take milliseconds, and a watcher task for each costs more than the
        # routing (bench/overhead.py): watch for the client leaving once it takes longer.
        watcher: list[asyncio.Task[None]] = []
        timer = asyncio.get_running_loop().call_later(
            _WATCH_AFTER, lambda: watcher.append(asyncio.create_task(self._watch(receive, task)))
        )
        try:
            resp = await self._connect()
            if resp is None:  # the client left before the box answered
                return
            await self._relay(resp, send)
        except ProxyError as exc:
            self.outcome.status = self.outcome.status or exc.status
            self.outcome.error = self.outcome.error or exc.message
            raise
        finally:
            if exchanges is not None:
                exchanges.discard(self)
            timer.cancel()
            for w in watcher:
                w.cancel()
            self._release()
            self.outcome.ended = time.monotonic()
            self._placement.done(self.outcome)

    async def _watch(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.outcome.client_gone = True
        if self._phase == "waiting":
            self._phase = "cancelled"
            task.cancel()
        elif self._resp is not None:
            self._resp.close()

    def close(self, reason: str) -> None:
        """The server's grace period is over: a request still waiting or sent is refused
        (503), a stream is cut and ends with an error line; either way the box is let go."""
        if self._closing is not None:
            return
        self._closing = reason
        if self._phase == "waiting" and self._task is not None:
            self._phase = "closing"
            self._task.cancel()
        elif self._resp is not None:
            self._resp.close()

    async def _connect(self) -> Response | None:
        """Place the request and send it; before the first byte reaches the client, a box
        that fails (unreachable, reset, timeout, 5xx) is replaced by the next best."""
        answers: dict[str, tuple[int, bytes]] = {}  # 5xx answers before the first byte
        try:
            return await self._try_boxes(answers)
        finally:
            self._blame(answers)

    def _blame(self, answers: dict[str, tuple[int, bytes]]) -> None:
        """Count the 5xx answers this request got against the boxes that gave them —
        unless two boxes gave the same one (the request's fault), or the box named the
        model in it (the (box, model)'s: a model that fails to load there)."""
        seen = list(answers.values())
        model = self.outcome.model
        for box, (status, body) in answers.items():
            if body and seen.count((status, body)) > 1:
                log.info("box %s answered %d as another box did: the request's error", box, status)
            elif _names_model(body, model):
                log.warning(
                    "box %s failed model %s (%d): the model's failure there", box, model, status
                )
                self._placement.model_failed(box, model)
            else:
                self._placement.failed(box)

    async def _try_boxes(self, answers: dict[str, tuple[int, bytes]]) -> Response | None:
        failed: set[str] = set()
        reasons: list[str] = []  # why each unreachable box was
        lacking: Target | None = None  # answered 404 on a route it may lack: its fallback runs
        try:
            self._lease, self._target = await self._placement.place(frozenset())
            while True:
                target = self._target
                self.outcome.box = target.box
                self.outcome.route = self._lease.reason if self._lease is not None else ""
                self.outcome.sent = time.monotonic()
                headers = request_headers(self._headers, target.api_key)
                try:
                    resp = await self._up.send(
                        target.box, self._method, target.url, headers=headers, body=target.body
                    )
                except UpstreamError as exc:
                    self._placement.failed(target.box)
                    failed.add(target.box)
                    reasons.append(exc.message)
                    if not await self._next_box(failed):
                        error = _unreachable(exc, reasons)
                        self.outcome.status = error.status
                        raise error from exc
                    continue
                if resp.status == 404 and target.instead is not None:
                    # Perhaps the box does not serve the route: no failure, no failover;
                    # the same box, holding the same slot, gets the translation instead.
                    # (The body is small and kept: it is relayed if the 404 stands.)
                    try:
                        missing = await resp.read()
                    except UpstreamError:
                        missing = b""
                    other = target.instead(missing)
                    if other is not None:
                        resp.close()
                        lacking, self._target = target, other
                        continue
                if lacking is not None:
                    if lacking.box == target.box and resp.status != 404:
                        # The translation found the model, so the 404 was the route's.
                        self._placement.lacks(lacking.box, lacking.path)
                    lacking = None
                if resp.status == 429:  # rate-limited: it rests, no mark against health
                    self._placement.refused(target.box, resp.header("retry-after"))
                    failed.add(target.box)
                    if await self._next_box(failed):
                        resp.close()
                        continue
                elif resp.status >= 500:
                    # A 500 may be the request's (Ollama: a model that fails to load, an
                    # input it chokes on); 502/503/504 speak of the box (busy, gateway).
                    body = await _error_body(resp) if resp.status == 500 else b""
                    answer = (resp.status, body)
                    alike = bool(body) and answer in answers.values()
                    answers[target.box] = answer
                    failed.add(target.box)
                    # The same error from two boxes is the request's, not theirs: it is
                    # relayed, and no third box is tried.
                    if not alike and await self._next_box(failed):
                        resp.close()
                        continue
                if self._phase == "cancelled":  # cancelled as the answer arrived
                    resp.close()
                    return None
                self._phase = "relaying"
                self._resp = resp
                return resp
        except asyncio.CancelledError:
            if self._phase == "closing":
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                raise NoCapacity(self._closing or "ollamux is shutting down") from None
            if self._phase != "cancelled":
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return None

    async def _next_box(self, failed: set[str]) -> bool:
        """Swap in the next best box; False (keeping the current target) if none."""
        if len(failed) >= self._max_attempts:
            return False
        self._release()
        try:
            self._lease, self._target = await self._placement.place(frozenset(failed))
        except ProxyError:
            return False
        return True

    async def _relay(self, resp: Response, send: Send) -> None:
        self.outcome.status = resp.status
        self.outcome.first_byte = time.monotonic()
        headers = [*resp.headers, (b"x-ollamux-endpoint", resp.box.encode())]
        if self.outcome.route:
            headers.append((b"x-ollamux-route", self.outcome.route.encode("latin-1", "replace")))
        assert self._target is not None
        translator = self._target.translator
        if translator is not None:
            kind = translator.content_type(resp.status, resp.content_type)
            headers = [(k, v) for k, v in headers if k != b"content-type"]
            headers.append((b"content-type", kind.encode()))
        if resp.streaming:
            await self._stream(resp, send, headers, translator)
            return
        try:
            body = await resp.read()
        except UpstreamError as exc:
            if self._closing is not None:
                raise NoCapacity(self._closing) from exc
            self.outcome.error = exc.message
            self._placement.failed(resp.box)
            raise
        finally:
            resp.close()
        self.outcome.tail = body[-_TAIL:]
        if translator is not None:
            try:
                body = translator.whole(resp.status, body)
            except UpstreamBadAnswer as exc:  # the client gets why, in its API's shape
                raise UpstreamBadAnswer(f"box {resp.box}: {exc.message}", box=resp.box) from exc
        headers.append((b"content-length", str(len(body)).encode()))
        try:
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except OSError:
            self.outcome.client_gone = True

    async def _stream(
        self,
        resp: Response,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        translator: Translator | None,
    ) -> None:
        outcome = self.outcome
        prev = last = first = b""
        # Anthropic's stream says the prompt's size in its first event (message_start); a
        # box may leave it out of the last (llama-server's message_delta): keep that too.
        head = outcome.path.startswith("/v1/messages")
        try:
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            async for chunk in resp.chunks():
                if head and not first:
                    first = chunk
                prev, last = last, chunk
                out = chunk if translator is None else translator.chunk(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except UpstreamError as exc:
            # Cut by the server going down, the box is not to blame.
            error: ProxyError = exc if self._closing is None else NoCapacity(self._closing)
            outcome.error = error.message
            if not outcome.client_gone:
                if error is exc:
                    log.warning("%s", exc.message)
                    self._placement.failed(resp.box)
                await _send_quietly(send, self._broken(resp, translator, error, prev + last))
            return
        except OSError:  # the client went away while we wrote to it
            outcome.client_gone = True
            return
        finally:
            outcome.tail = (prev + last)[-_TAIL:]
            if first and first is not prev and first is not last:
                outcome.tail = first[:_TAIL] + b"\n" + outcome.tail
            resp.close()
        await _send_quietly(send, b"" if translator is None else translator.end())

    def _broken(
        self, resp: Response, translator: Translator | None, error: ProxyError, tail: bytes
    ) -> bytes:
        """The last bytes of a stream the box broke off, in the client's API's framing."""
        if isinstance(translator, Breakable):
            return translator.broken(error)
        if translator is None and self._stream_error is not None:
            return self._stream_error(error, tail)
        kind = resp.content_type
        if translator is not None:
            kind = translator.content_type(resp.status, kind)
        return _error_tail(kind, error)

    def _release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def _unreachable(exc: UpstreamError, reasons: list[str]) -> ProxyError:
    """No box could be reached for this request: that is the fleet being down, a 503 with
    Retry-After naming the boxes tried and why (a box that timed out stays a 504)."""
    if type(exc) is not UpstreamError:
        return exc
    return NoCapacity(f"no box could take the request: {'; '.join(reasons)}", retry_after=5)


_ERROR_PEEK = 64 * 1024  # bytes of a box's error answer read to compare and attribute it


async def _error_body(resp: Response) -> bytes:
    """A box's error answer, read (and kept for relaying) if it is small; else b""."""
    if resp.streaming:
        return b""
    try:
        return await resp.peek(_ERROR_PEEK)
    except UpstreamError:
        return b""


def _names_model(body: bytes, model: str) -> bool:
    """Whether a box's error message names the model (with or without its tag)."""
    if not body or not model:
        return False
    text = body.decode("utf-8", "replace").lower()
    name = model.lower()
    base = name.removesuffix(":latest")
    return name in text or (base != name and f'"{base}"' in text) or f"'{base}'" in text


def _error_tail(content_type: str, exc: ProxyError) -> bytes:
    """A last message in the stream's own framing, so the client sees why it ended."""
    if content_type.startswith("text/event-stream"):
        error = {"error": {"message": exc.message, "type": exc.code, "code": exc.status}}
        return b"data: " + orjson.dumps(error) + b"\n\n"
    return orjson.dumps({"error": exc.message}) + b"\n"


async def _send_quietly(send: Send, body: bytes) -> None:
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": body, "more_body": False})
