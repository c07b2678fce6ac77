"""Every translator over malformed box output (hypothesis): no exception escapes — an
answer that cannot be translated is an ``UpstreamBadAnswer`` (a 502 in the client's
shape) when read whole, and a stream that breaks ends with an error line in the
client's framing. Box output is built from plausible shapes with wrong types in every
place (usage, choices, deltas, tool calls, messages, embeddings), cut at random points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollamux.backends.relay import Translator
from ollamux.backends.translate.anthropic_response import (
    CountFromOpenAI,
    OpenAIToAnthropic,
    from_ollama,
)
from ollamux.backends.translate.common import SSEReader
from ollamux.backends.translate.ollama_client import EmbeddingsToOllama, OpenAIToOllama
from ollamux.backends.translate.openai_client import OllamaToEmbeddings, OllamaToOpenAI
from ollamux.backends.translate.responses_plan import Chained
from ollamux.backends.translate.responses_stream import ChatToResponses
from ollamux.routing.errors import UpstreamBadAnswer

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def maybe(shape: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return shape | anything


call = st.fixed_dictionaries(
    {},
    optional={
        "id": maybe(st.text(max_size=5)),
        "index": maybe(st.integers(0, 3)),
        "function": maybe(
            st.fixed_dictionaries(
                {}, optional={"name": maybe(st.text(max_size=5)), "arguments": anything}
            )
        ),
    },
)
usage = maybe(
    st.fixed_dictionaries({}, optional={"prompt_tokens": anything, "completion_tokens": anything})
)
openai_message = maybe(
    st.fixed_dictionaries(
        {},
        optional={
            "content": anything,
            "reasoning_content": anything,
            "tool_calls": maybe(st.lists(maybe(call), max_size=2)),
        },
    )
)
choice = maybe(
    st.fixed_dictionaries(
        {},
        optional={
            "delta": openai_message,
            "message": openai_message,
            "text": anything,
            "finish_reason": anything,
        },
    )
)
openai_doc = st.fixed_dictionaries(
    {},
    optional={
        "choices": maybe(st.lists(choice, max_size=2)),
        "usage": usage,
        "timings": maybe(st.fixed_dictionaries({}, optional={"prompt_ms": anything})),
        "created": anything,
        "error": anything,
        "data": maybe(
            st.lists(
                maybe(
                    st.fixed_dictionaries({}, optional={"embedding": anything, "index": anything})
                )
            )
        ),
    },
)
ollama_doc = st.fixed_dictionaries(
    {},
    optional={
        "message": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "content": anything,
                    "thinking": anything,
                    "tool_calls": maybe(st.lists(maybe(call), max_size=2)),
                },
            )
        ),
        "response": anything,
        "done": anything,
        "done_reason": anything,
        "prompt_eval_count": anything,
        "eval_count": anything,
        "created_at": anything,
        "error": anything,
        "embeddings": anything,
    },
)


def _dumps(doc: Any) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS) if _finite(doc) else b"{"


def _finite(doc: Any) -> bool:
    try:
        orjson.dumps(doc)
    except TypeError:
        return False
    return True


REQUEST = {"model": "m", "input": "hi"}  # the Responses request being answered

TRANSLATORS: dict[str, Callable[[], Translator]] = {
    "openai->ollama chat stream": lambda: OpenAIToOllama("m", stream=True, generate=False),
    "openai->ollama generate": lambda: OpenAIToOllama("m", stream=False, generate=True),
    "openai->ollama embed": lambda: EmbeddingsToOllama("m", legacy=False),
    "openai->ollama embeddings": lambda: EmbeddingsToOllama("m", legacy=True),
    "ollama->openai chat stream": lambda: OllamaToOpenAI(
        "m", stream=True, completion=False, include_usage=True
    ),
    "ollama->openai completion": lambda: OllamaToOpenAI("m", stream=False, completion=True),
    "ollama->openai embeddings": lambda: OllamaToEmbeddings("m", base64=True),
    "openai->anthropic stream": lambda: OpenAIToAnthropic("m", stream=True),
    "openai->anthropic whole": lambda: OpenAIToAnthropic("m", stream=False),
    "openai->anthropic count": lambda: CountFromOpenAI(),
    "openai->responses stream": lambda: ChatToResponses(REQUEST, stream=True),
    "openai->responses whole": lambda: ChatToResponses(REQUEST, stream=False),
    "ollama->anthropic stream": lambda: from_ollama("m", stream=True),
    "ollama->responses stream": lambda: Chained(
        OllamaToOpenAI("m", stream=True, completion=False, include_usage=True),
        ChatToResponses(REQUEST, stream=True),
    ),
}


def _frames(docs: list[Any], sse: bool, junk: bytes) -> bytes:
    if sse:
        return b"".join(b"data: " + _dumps(d) + b"\n\n" for d in docs) + junk + b"data: [DONE]\n\n"
    return b"".join(_dumps(d) + b"\n" for d in docs) + junk


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(TRANSLATORS)),
    openai_docs=st.lists(openai_doc, max_size=4),
    ollama_docs=st.lists(ollama_doc, max_size=4),
    junk=st.binary(max_size=20),
    cuts=st.lists(st.integers(1, 40), max_size=6),
    status=st.sampled_from([200, 200, 400, 500]),
)
def test_no_translator_lets_an_exception_escape(
    name: str,
    openai_docs: list[Any],
    ollama_docs: list[Any],
    junk: bytes,
    cuts: list[int],
    status: int,
) -> None:
    from_openai = name.startswith("openai")
    docs = openai_docs if from_openai else ollama_docs
    body = _frames(docs, from_openai, junk)
    # Whole: a translation, or the box's bad answer (a 502 in the client's shape).
    try:
        out = TRANSLATORS[name]().whole(status, body)
        assert isinstance(out, bytes)
    except UpstreamBadAnswer:
        pass
    # Streamed in arbitrary pieces: chunks and the end never raise.
    translator = TRANSLATORS[name]()
    translator.content_type(status, "")
    pos, out = 0, b""
    for cut in cuts:
        out += translator.chunk(body[pos : pos + cut])
        pos += cut
    out += translator.chunk(body[pos:])
    out += translator.end()
    assert isinstance(out, bytes)


def test_an_event_stream_without_blank_lines_is_refused_past_the_limit() -> None:
    reader = SSEReader(limit=1000)
    line = b"data: " + b"x" * 90 + b"\n"  # events that never end
    try:
        for _ in range(20):
            list(reader.feed(line))
    except UpstreamBadAnswer as exc:
        assert "limits.max_box_event_bytes" in exc.message
    else:
        raise AssertionError("the buffer grew past its limit")


def test_a_broken_translated_stream_ends_with_an_error_line() -> None:
    translator = OpenAIToOllama("m", stream=True, generate=False, max_event=200)
    out = translator.chunk(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n')
    out += translator.chunk(b"data: " + b"y" * 500)  # one event past the limit
    out += translator.chunk(b'data: {"choices":[{"delta":{"content":"more"}}]}\n\n')
    out += translator.end()
    lines = [orjson.loads(x) for x in out.splitlines()]
    assert lines[0]["message"]["content"] == "hi"
    assert "error" in lines[-1] and "limits.max_box_event_bytes" in lines[-1]["error"]
    assert not any(x.get("message", {}).get("content") == "more" for x in lines)
