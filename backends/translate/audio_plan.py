"""How ``POST /v1/audio/transcriptions`` reaches a box: Ollama serves it from 0.20.0 (a
multipart upload, answered by a model that hears), so only Ollama boxes that new, or
whose version says nothing, get it; their bytes go unchanged, multipart boundary and all.
No other kind of box is known to serve it, and nothing translates it."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from ollamux.backends.relay import Outbound
from ollamux.backends.translate.plans import OLLAMA_KINDS, Routed
from ollamux.routing.errors import BadRequest, RouteNotImplemented
from ollamux.routing.state import BoxState, version_key

TRANSCRIPTIONS = "/v1/audio/transcriptions"
OLLAMA_SINCE = (0, 20, 0)


def form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """The text fields of a ``multipart/form-data`` body (files are skipped)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("a transcription is a multipart/form-data upload")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest("the multipart/form-data body could not be read")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                fields[name] = payload.decode("utf-8", "replace")
    return fields


def serves_transcriptions(box: BoxState) -> bool:
    if box.kind != "ollama" or TRANSCRIPTIONS in box.lacking:
        return False
    known = version_key(box.version or "0.0.0")
    return not any(known) or known >= OLLAMA_SINCE


def for_transcriptions(path: str, body: bytes, doc: dict[str, Any], model: str, key: str) -> Routed:
    def same(box: BoxState) -> Outbound:
        return Outbound(path, body)

    error = RouteNotImplemented(
        f"no box that has model {model!r} serves POST {path}: it takes an Ollama box of "
        f"version {'.'.join(map(str, OLLAMA_SINCE))} or newer"
    )
    return Routed(same, OLLAMA_KINDS, error, unable=lambda box: not serves_transcriptions(box))
