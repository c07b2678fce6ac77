"""Model management on several boxes at once, the decisions: which boxes a call goes
to, what their answers mean for the client, and several boxes' progress as one stream.
Pure functions of their inputs; the I/O is in ``backends.model_ops.io``.

Targets: the boxes an ``X-Ollamux-Endpoint`` request header names (comma-separated;
an unknown name is a 400 that names it), else every Ollama box that is up. Operations
on a model that exists (copy, delete, push, unload) only go where it is.

Answers (``verdict``): success when every box succeeded (for copy, delete, unload: or
did not have the model); 404 when no box had it; when some failed, an error that names
each failed box with its reason and the boxes where it worked: status 500 if it worked
somewhere (partial failure), else the boxes' own status when they agree, else 502.

Progress (``Progress``): pull, push and create stream Ollama's progress lines from each
box; the client gets one stream in the same shape that stays meaningful for several
boxes. A layer's line sums ``total`` and ``completed`` over the boxes (a box that has
not reported the layer yet counts with the size another one reported, so the total is
right from the first line) and says on how many boxes the layer is done; other
lines carry the box's name (``gpu-a: writing manifest``); a box's end is
``gpu-a: success (1/2 boxes done)`` or ``gpu-b: error: ...``, not an ``error`` line, so
clients keep reading; the last line is ``{"status": "success"}`` only when every box
succeeded, else ``{"error": "pull failed on gpu-b: ..."}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ollamux.backends.translate.common import error_message, now_iso
from ollamux.routing.errors import BadRequest, ModelNotFound, NoCapacity, ProxyError
from ollamux.routing.state import Fleet

HEADER = "x-ollamux-endpoint"
_BLOB = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
_DURATION = re.compile(r"(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_NUMBER = re.compile(r"\d+\.?\d*|\.\d+")


# -- targets --------------------------------------------------------------------------


def named(fleet: Fleet, header: str) -> tuple[str, ...]:
    """The boxes an ``X-Ollamux-Endpoint`` header names, in its order, once each."""
    names = tuple(dict.fromkeys(n.strip() for n in header.split(",") if n.strip()))
    if not names:
        raise BadRequest("X-Ollamux-Endpoint names no box")
    unknown = [n for n in names if n not in fleet.by_name]
    if unknown:
        known = ", ".join(b.name for b in fleet.boxes)
        raise BadRequest(f"X-Ollamux-Endpoint: no box named {', '.join(unknown)} (boxes: {known})")
    return names


def ollama_boxes(fleet: Fleet, header: str | None, what: str) -> tuple[str, ...]:
    """Where a model-management call goes: the named boxes, else every Ollama box up."""
    if header is not None:
        names = named(fleet, header)
        others = [n for n in names if fleet.by_name[n].kind != "ollama"]
        if others:
            raise BadRequest(f"{what} is for Ollama boxes; {', '.join(others)} is not one")
        return names
    up = tuple(b.name for b in fleet.boxes if b.kind == "ollama" and b.routable)
    if not up:
        raise NoCapacity(f"no Ollama box is up for {what}", retry_after=5)
    return up


def holders(fleet: Fleet, key: str) -> tuple[str, ...]:
    """The Ollama boxes that are up and have the model."""
    return tuple(
        b.name for b in fleet.boxes if b.kind == "ollama" and b.routable and key in b.models
    )


def down_with(fleet: Fleet, key: str) -> tuple[str, ...]:
    """The Ollama boxes that had the model when last seen but are not up now: a copy or
    a delete cannot reach them, and must say so."""
    return tuple(
        b.name for b in fleet.boxes if b.kind == "ollama" and not b.routable and key in b.models
    )


def unload_boxes(fleet: Fleet, key: str) -> tuple[str, ...]:
    """Where an unload goes: every box up that has the model loaded, and every Ollama box
    up that has it (a load in the last probe interval is not seen yet; for an Ollama box
    that has not loaded it, an unload is a no-op). OpenAI-compatible boxes load models
    themselves: they are never asked."""
    return tuple(
        b.name
        for b in fleet.boxes
        if b.routable
        and b.kind != "openai"
        and (key in b.loaded or (b.kind == "ollama" and key in b.models))
    )


def check_digest(text: str) -> None:
    """A blob's name as Ollama takes it, refused before any box is asked."""
    if not _BLOB.fullmatch(text):
        raise BadRequest(f"invalid digest {text!r}: expected sha256:<64 hex digits>")


# -- answers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BoxResult:
    """What one box answered to one call; ``answered`` is false when it was not reached
    (``status`` is then the proxy's: 502, 504, or 503 for a box known to be down)."""

    box: str
    status: int
    error: str | None = None
    body: bytes = b""
    content_type: str = ""
    answered: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


def answer(box: str, status: int, content_type: str, body: bytes) -> BoxResult:
    error = None if 200 <= status < 300 else error_message(body)
    return BoxResult(box, status, error, body, content_type)


def unreached(box: str, status: int, message: str) -> BoxResult:
    return BoxResult(box, status, message, answered=False)


def verdict(
    verb: str, model: str, results: Sequence[BoxResult], *, missing_ok: bool = False
) -> ProxyError | None:
    """None when the call worked on every box (``missing_ok``: a 404 is a box that did
    not have the model), else the error to answer; see the module docstring."""
    done: list[BoxResult] = []
    missing: list[BoxResult] = []
    failed: list[BoxResult] = []
    for r in results:
        if r.ok:
            done.append(r)
        elif missing_ok and r.status == 404:
            missing.append(r)
        else:
            failed.append(r)
    if not failed:
        if missing and not done:
            return ModelNotFound(f'model "{model}" not found')
        return None
    groups: dict[str, list[str]] = {}
    for r in failed:
        groups.setdefault(r.error or f"status {r.status}", []).append(r.box)
    message = f"{verb} failed on " + "; ".join(f"{', '.join(b)}: {e}" for e, b in groups.items())
    if done:
        message += f" (done on {', '.join(r.box for r in done)})"
    error = ProxyError(message)
    statuses = {r.status for r in failed}
    error.status = 500 if done else statuses.pop() if len(statuses) == 1 else 502
    return error


# -- progress -------------------------------------------------------------------------


class Progress:
    """Several boxes' progress lines as one stream; see the module docstring."""

    def __init__(self, verb: str, boxes: Sequence[str]) -> None:
        self._verb = verb
        self._boxes = tuple(boxes)
        self._layers: dict[str, dict[str, tuple[int | None, int]]] = {}
        self.results: dict[str, BoxResult] = {}

    def line(self, box: str, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        """The client's line for one line of one box (None: nothing to say)."""
        if box in self.results:
            return None
        if "error" in doc:
            return self.fail(BoxResult(box, 500, str(doc["error"])))
        status = str(doc.get("status") or "")
        if status == "success":
            self.results[box] = BoxResult(box, 200)
            done = sum(r.ok for r in self.results.values())
            return {"status": f"{box}: success ({done}/{len(self._boxes)} boxes done)"}
        digest = doc.get("digest")
        if isinstance(digest, str) and digest:
            return self._layer(box, status, digest, doc)
        return {"status": f"{box}: {status}"}

    def fail(self, result: BoxResult) -> dict[str, Any]:
        self.results[result.box] = result
        return {"status": f"{result.box}: error: {result.error}"}

    def end(self, box: str) -> dict[str, Any] | None:
        """The box's stream ended; without success or error, that is a failure."""
        if box in self.results:
            return None
        return self.fail(BoxResult(box, 502, f"box {box} ended the {self._verb} unfinished"))

    def error(self) -> ProxyError | None:
        results = [
            self.results.get(b) or BoxResult(b, 502, f"box {b} did not finish") for b in self._boxes
        ]
        return verdict(self._verb, "", results)

    def final(self) -> dict[str, Any]:
        error = self.error()
        return {"status": "success"} if error is None else {"error": error.message}

    def _layer(self, box: str, status: str, digest: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        boxes = self._layers.setdefault(digest, {})
        total = _count(doc.get("total")) or boxes.get(box, (None, 0))[0]
        boxes[box] = (total, _count(doc.get("completed")) or 0)
        size = next((t for t, _ in boxes.values() if t), 0)
        n = len(self._boxes)
        complete = sum(1 for t, c in boxes.values() if t and c >= t)
        out: dict[str, Any] = {
            "status": f"{status} ({complete}/{n} boxes done)",
            "digest": digest,
            "total": sum(t or size for t, _ in boxes.values()) + (n - len(boxes)) * size,
        }
        completed = sum(c for _, c in boxes.values())
        if completed:  # as Ollama: no "completed" before any byte arrived
            out["completed"] = completed
        return out


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


# -- load and unload through /api/generate and /api/chat ----------------------------------


def zero_keep_alive(value: object) -> bool:
    """``keep_alive`` 0 as Ollama reads it: the number 0, or a duration string of zero
    ("0", "0s", "0m", "0h0m")."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if not isinstance(value, str):
        return False
    text = value.strip().lstrip("+-")
    if text != "0" and not _DURATION.fullmatch(text):
        return False
    return not any(float(n) for n in _NUMBER.findall(text))


def is_unload(chat: bool, doc: Mapping[str, Any]) -> bool:
    """Ollama's "unload this model" request: nothing to answer, and ``keep_alive`` 0."""
    empty = not doc.get("messages") if chat else not doc.get("prompt")
    return empty and zero_keep_alive(doc.get("keep_alive"))


def unloaded(model: str, chat: bool) -> dict[str, Any]:
    """Ollama's answer to an unload request."""
    head: dict[str, Any] = {"model": model, "created_at": now_iso()}
    if chat:
        head["message"] = {"role": "assistant", "content": ""}
    else:
        head["response"] = ""
    return {**head, "done": True, "done_reason": "unload"}
