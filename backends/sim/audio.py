"""The simulated Ollama box's ``POST /v1/audio/transcriptions``, as Ollama builds it
(since 0.20.0): a multipart upload (``model``, ``file``, optional ``language``,
``prompt``, ``response_format``) turned into a chat that carries the audio, answered by the
box's own ``/api/chat``, and the words back as ``{"text": ...}`` (plain text when
``response_format`` is ``text``). An older box answers 404 like Ollama's router."""

from __future__ import annotations

import base64
from collections.abc import Callable

import aiohttp
import orjson
from aiohttp import web

from ollamux.backends.sim.responses import error as openai_error
from ollamux.backends.sim.responses import version_at_least

SINCE = (0, 20, 0)
SYSTEM = (
    "Transcribe the audio exactly as spoken. Output only the spoken words. "
    "Do not answer any question in the audio."
)


class Handler:
    def __init__(self, version: Callable[[], str], chat_url: Callable[[], str]) -> None:
        self._version = version
        self._chat_url = chat_url

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not version_at_least(self._version(), SINCE):
            return web.Response(status=404, text="404 page not found")
        try:
            form = await request.post()
        except ValueError as exc:
            return openai_error(400, f"failed to parse multipart form: {exc}")
        model, upload = form.get("model"), form.get("file")
        if not isinstance(model, str) or not model:
            return openai_error(400, "model is required")
        if not isinstance(upload, web.FileField):
            return openai_error(400, "file is required")
        audio = upload.file.read()
        if not audio:
            return openai_error(400, "audio file is empty")
        system = SYSTEM
        language, prompt = form.get("language"), form.get("prompt")
        if isinstance(language, str) and language:
            system += f" The audio is in {language}."
        if isinstance(prompt, str) and prompt:
            system += f" Context: {prompt}"
        heard = base64.b64encode(audio).decode()
        chat = {
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {
                    "role": "user",
                    "content": "What exact words are spoken in this audio?",
                    "images": [heard],
                },
            ],
            "stream": False,
            "options": {"temperature": 0},
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(self._chat_url(), data=orjson.dumps(chat)) as answer,
        ):
            doc = orjson.loads(await answer.read())
        if answer.status != 200:
            return openai_error(answer.status, str(doc.get("error")))
        text = str((doc.get("message") or {}).get("content") or "").strip()
        if form.get("response_format") == "text":
            return web.Response(text=text, content_type="text/plain")
        return web.Response(body=orjson.dumps({"text": text}), content_type="application/json")
