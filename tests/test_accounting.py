"""Token counts and timings read from the end of a response body (``Outcome.tail``)."""

from __future__ import annotations

from typing import Any

import ollama
import orjson
import pytest

from ollamux.backends.sim.ollama import SimConfig
from ollamux.routing.accounting import NOTHING, Counts, read_counts


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def sse(*events: dict[str, Any] | str) -> bytes:
    out = b""
    for event in events:
        data = event.encode() if isinstance(event, str) else orjson.dumps(event)
        out += b"data: " + data + b"\n\n"
    return out


OLLAMA_FINAL = {
    "model": "llama3.2",
    "done": True,
    "total_duration": 3_000_000_000,
    "load_duration": 500_000_000,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 250_000_000,
    "eval_count": 290,
    "eval_duration": 2_000_000_000,
}


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        pytest.param(
            ndjson({"model": "llama3.2", "response": "hi", "done": False}, OLLAMA_FINAL),
            Counts(26, 290, 0.25, 2.0, 0.5, 3.0),
            id="ollama-stream",
        ),
        pytest.param(
            # A long answer cut at the front, whose text mentions the keys themselves.
            orjson.dumps(
                {
                    "message": {"content": 'x", "eval_count": 999, ' * 500},
                    **OLLAMA_FINAL,
                }
            )[-8192:],
            Counts(26, 290, 0.25, 2.0, 0.5, 3.0),
            id="ollama-whole-body-truncated",
        ),
        pytest.param(
            # A tool call's arguments come before the counts: the last occurrence wins.
            orjson.dumps(
                {
                    "message": {"tool_calls": [{"function": {"arguments": {"eval_count": 7}}}]},
                    **OLLAMA_FINAL,
                }
            ),
            Counts(26, 290, 0.25, 2.0, 0.5, 3.0),
            id="ollama-tool-arguments",
        ),
        pytest.param(
            sse(
                {"choices": [{"delta": {"content": "x"}}], "usage": None},
                {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 34}},
                "[DONE]",
            ),
            Counts(12, 34),
            id="openai-stream-usage",
        ),
        pytest.param(
            orjson.dumps(
                {
                    "choices": [{"message": {"content": "hello"}}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
                }
            ),
            Counts(9, 3),
            id="openai-whole",
        ),
        pytest.param(
            sse(
                {
                    "choices": [{"delta": {}, "finish_reason": "stop"}],
                    "timings": {
                        "prompt_n": 40,
                        "prompt_ms": 120.0,
                        "predicted_n": 64,
                        "predicted_ms": 800.0,
                        "predicted_per_second": 80.0,
                    },
                },
                "[DONE]",
            ),
            Counts(40, 64, 0.12, 0.8, None, 0.92),
            id="llama-server-timings",
        ),
        pytest.param(ndjson({"error": "model crashed"}), NOTHING, id="error-line"),
        pytest.param(b"", NOTHING, id="empty"),
    ],
)
def test_counts_are_read_from_the_final_chunk(tail: bytes, expected: Counts) -> None:
    got = read_counts(tail)
    assert got.prompt_tokens == expected.prompt_tokens
    assert got.output_tokens == expected.output_tokens
    for name in ("prompt_seconds", "decode_seconds", "load_seconds", "total_seconds"):
        want = getattr(expected, name)
        assert getattr(got, name) == (None if want is None else pytest.approx(want)), name


def test_decode_rate_needs_tokens_and_a_duration() -> None:
    assert Counts(output_tokens=100, decode_seconds=2.0).decode_rate == 50.0
    assert Counts(output_tokens=100).decode_rate is None
    assert Counts(decode_seconds=2.0).decode_rate is None


async def test_totals_match_what_the_client_was_told(cluster: Any) -> None:
    """Streamed and whole answers through the proxy: the proxy's token totals equal the
    counts the boxes reported to the client, and the client's bytes were not touched."""
    async with (
        cluster(SimConfig(name="a", preloaded=["llama3.2"], default_tokens=12)) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        told_prompt = told_output = 0
        for i in range(3):
            parts = [
                p
                async for p in await client.generate(
                    model="llama3.2",
                    prompt=f"count {i}",
                    stream=True,
                    options={"num_predict": 5 + i},
                )
            ]
            told_prompt += parts[-1].prompt_eval_count or 0
            told_output += parts[-1].eval_count or 0
        reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        told_prompt += reply.prompt_eval_count or 0
        told_output += reply.eval_count or 0
        assert told_output == 5 + 6 + 7 + 12

        stats = (await c.http.get("/router/stats")).json()
        assert stats["totals"]["output_tokens"] == told_output
        assert stats["totals"]["prompt_tokens"] == told_prompt
        newest = stats["recent"][0]
        assert newest["route"] == "/api/chat" and newest["output_tokens"] == 12
        assert newest["decode_tps"] is None or newest["decode_tps"] > 0
