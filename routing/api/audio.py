"""``POST /v1/audio/transcriptions``, routed like the other inference routes (a slot, fair
share, failover, accounting) to an Ollama box that serves it (``audio_plan``). The
multipart upload is read only for its ``model`` field and forwarded as it came."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from ollamux.backends.translate.audio_plan import TRANSCRIPTIONS, for_transcriptions, form_fields
from ollamux.routing.api.forward import proxy
from ollamux.routing.errors import BadRequest


async def transcriptions(request: Request) -> Any:
    body = await request.body()
    fields = form_fields(body, request.headers.get("content-type", ""))
    model = fields.get("model")
    if not model:
        raise BadRequest("model is required", param="model")
    return await proxy(request, TRANSCRIPTIONS, model, body, {}, for_transcriptions, chat=False)


routes: list[BaseRoute] = [Route(TRANSCRIPTIONS, transcriptions, methods=["POST"])]
