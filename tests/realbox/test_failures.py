"""A real llama-server killed mid-stream: each client gets a clear end (an error, not a
silent cut that looks like a finished answer), the slots free, the box turns ``down``,
and it is served again once restarted on the same address."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from tests.realbox.conftest import Fleet, LlamaServer, llama_server, run_fleet, single_args

MODEL = "tiny-victim"
LONG = 6000  # tokens: the stream is still going when the box dies


@pytest.fixture
def victim(llama_bin: Path, tiny_model: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    args = single_args(tiny_model, MODEL, slots=2, ctx=32768)
    with llama_server(llama_bin, tmp_path, "victim", args) as server:
        yield server


async def in_use(fleet: Fleet) -> int:
    return sum(m["in_use"] for m in (await fleet.endpoint("victim"))["models"])


async def test_killed_mid_stream_then_restarted(victim: LlamaServer) -> None:
    async with (
        # Two streams broken at once open the box's breaker: keep its pause short.
        run_fleet({"victim": victim}, failover={"breaker_backoff": 1.0}) as fleet,
        ollama.AsyncClient(host=fleet.url) as oclient,
        openai.AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="-", max_retries=0) as oai,
    ):
        assert (await fleet.endpoint("victim"))["health"] == "healthy"
        ollama_stream = await oclient.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "go on"}],
            stream=True,
            options={"num_predict": LONG},
        )
        openai_stream = await oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "go on"}],
            max_tokens=LONG,
            stream=True,
        )
        first = await anext(ollama_stream)
        assert not first.done
        assert (await anext(openai_stream)).choices
        assert await in_use(fleet) == 2

        victim.kill()

        # The Ollama client: the stream's last line is {"error": ...}, raised by the client.
        seen = 0
        with pytest.raises(ollama.ResponseError) as ollama_error:
            async for part in ollama_stream:
                assert not part.done, "a killed stream must not end like a finished answer"
                seen += 1
        assert ollama_error.value.error
        # The OpenAI client: an error event, raised by the SDK.
        with pytest.raises(openai.APIError):
            async for chunk in openai_stream:
                assert not any(c.finish_reason for c in chunk.choices)
        await openai_stream.close()

        async def slots_free() -> bool:
            return await in_use(fleet) == 0

        await fleet.wait_for(slots_free, within=10)

        async def down() -> bool:
            return bool((await fleet.endpoint("victim"))["health"] == "down")

        await fleet.wait_for(down, within=15)
        refused = await fleet.http.post(
            "/api/chat", json={"model": MODEL, "messages": [], "stream": False}
        )
        assert refused.status_code == 503 and "retry-after" in refused.headers

        await asyncio.to_thread(victim.start)  # the same port: the box is back

        async def back() -> bool:
            box = await fleet.endpoint("victim")
            return bool(box["health"] == "healthy" and box["breaker"] != "open")

        await fleet.wait_for(back, within=15)
        reply = await oclient.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "again"}],
            stream=False,
            options={"num_predict": 4},
        )
        assert reply.done and reply.eval_count == 4
