"""The official ``ollama`` Python client through ollamux, on models only real llama-servers
serve: every answer is llama-server's OpenAI API translated to Ollama's, for real."""

from __future__ import annotations

import json

import ollama
import pytest

import tests.test_simulated as docs
from tests.realbox.conftest import ONE, ONLY_ROUTER, SIM_MODEL, Fleet

MESSAGES = [{"role": "user", "content": "tell me a story"}]


def names(models: list[str]) -> set[str]:
    return {m.removesuffix(":latest") for m in models}


async def test_list_and_ps(fleet: Fleet) -> None:
    async with ollama.AsyncClient(host=fleet.url) as client:
        listed = (await client.list()).models
        assert {ONE, ONLY_ROUTER, SIM_MODEL.removesuffix(":latest")} <= names(
            [m.model or "" for m in listed]
        )
        running = names([m.model or "" for m in (await client.ps()).models])
        # The single-model server's model is loaded once the server is healthy; the
        # simulated box preloads its model.
        assert {ONE, SIM_MODEL.removesuffix(":latest")} <= running


async def test_chat_not_streamed(fleet: Fleet) -> None:
    async with ollama.AsyncClient(host=fleet.url) as client:
        reply = await client.chat(
            model=ONE, messages=MESSAGES, stream=False, options={"num_predict": 8}
        )
    assert reply.model == ONE and reply.done and reply.done_reason == "length"
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count == 8 and reply.prompt_eval_count
    assert reply.total_duration and reply.eval_duration  # from llama-server's timings


async def test_chat_streamed(fleet: Fleet) -> None:
    async with ollama.AsyncClient(host=fleet.url) as client:
        parts = [
            p
            async for p in await client.chat(
                model=ONE, messages=MESSAGES, stream=True, options={"num_predict": 10}
            )
        ]
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 10


async def test_generate_on_a_router_model(fleet: Fleet) -> None:
    async with ollama.AsyncClient(host=fleet.url) as client:
        whole = await client.generate(
            model=ONLY_ROUTER, prompt="once upon a time", stream=False, options={"num_predict": 6}
        )
        assert whole.response and whole.done and whole.eval_count == 6
        assert whole.done_reason == "length"
        parts = [
            p
            async for p in await client.generate(
                model=ONLY_ROUTER, prompt="once upon", stream=True, options={"num_predict": 6}
            )
        ]
        assert "".join(p.response for p in parts) and parts[-1].done

        # Loaded on demand by the router: the next probe sees it, and ps lists it.
        async def loaded() -> bool:
            entry = await fleet.model("llama-router", ONLY_ROUTER)
            return entry is not None and bool(entry["loaded"])

        await fleet.wait_for(loaded)
        running = names([m.model or "" for m in (await client.ps()).models])
    assert ONLY_ROUTER in running


async def test_unknown_model_is_an_ollama_404(fleet: Fleet) -> None:
    async with ollama.AsyncClient(host=fleet.url) as client:
        try:
            await client.chat(model="no-such-model", messages=MESSAGES, stream=False)
        except ollama.ResponseError as exc:
            assert exc.status_code == 404 and "no-such-model" in exc.error
        else:
            raise AssertionError("an unknown model was answered")


# Ollama's documented fields (docs/api.md; the lists tests/test_simulated.py checks the
# simulated Ollama box against) that the translation does not give yet for a
# llama-server model: the final line's `load_duration` and /api/ps's `context_length`.
# (`context`, deprecated, is not expected.)
GAPS = {"load_duration", "context_length"}


async def ollama_answers(fleet: Fleet) -> dict[str, tuple[set[str], set[str]]]:
    """{what: (fields present, fields documented)} for a llama-server-only model."""
    http, chat_body = fleet.http, {"model": ONE, "messages": MESSAGES}
    options = {"options": {"num_predict": 3}}
    chat = (await http.post("/api/chat", json={**chat_body, **options})).text.splitlines()
    gen = await http.post("/api/generate", json={"model": ONE, "prompt": "hi", **options})
    whole = await http.post("/api/chat", json={**chat_body, **options, "stream": False})
    tags = next(m for m in (await http.get("/api/tags")).json()["models"] if m["name"] == ONE)
    ps = next(m for m in (await http.get("/api/ps")).json()["models"] if m["name"] == ONE)
    show = (await http.post("/api/show", json={"model": ONE})).json()
    first, last = json.loads(chat[0]), json.loads(chat[-1])
    gen_lines = gen.text.splitlines()
    gen_first, gen_last = json.loads(gen_lines[0]), json.loads(gen_lines[-1])
    final_generate = docs.GENERATE_FINAL_FIELDS - {"context"}
    return {
        "chat chunk": (set(first), docs.CHAT_CHUNK_FIELDS),
        "chat final": (set(last), docs.CHAT_FINAL_FIELDS),
        "chat whole": (set(whole.json()), docs.CHAT_FINAL_FIELDS),
        "generate chunk": (set(gen_first), docs.GENERATE_CHUNK_FIELDS),
        "generate final": (set(gen_last), final_generate),
        "tags": (set(tags), docs.TAGS_FIELDS),
        "tags details": (set(tags["details"]), docs.DETAILS_FIELDS),
        "ps": (set(ps), docs.PS_FIELDS),
        "show": (set(show), docs.SHOW_FIELDS),
    }


async def test_translated_answers_carry_ollamas_documented_fields(fleet: Fleet) -> None:
    answers = await ollama_answers(fleet)
    missing = {what: sorted(doc - got - GAPS) for what, (got, doc) in answers.items()}
    assert missing == {what: [] for what in answers}


@pytest.mark.xfail(strict=True, reason="known gaps of the translation (GAPS); fix, then drop")
async def test_translated_answers_have_no_known_gaps(fleet: Fleet) -> None:
    answers = await ollama_answers(fleet)
    assert all(not (doc - got) for what, (got, doc) in answers.items() if what != "generate final")


async def test_a_llama_server_error_reaches_the_client_in_ollamas_shape(fleet: Fleet) -> None:
    """llama-server answers ``{"error": {"code", "message", "type"}}`` (here: embeddings
    from a server started without ``--embeddings``); an Ollama client gets Ollama's shape."""
    resp = await fleet.http.post("/api/embed", json={"model": ONE, "input": ["a"]})
    assert resp.status_code == 501 and resp.headers["x-ollamux-endpoint"] == "llama-one"
    error = resp.json()["error"]
    assert isinstance(error, str) and "--embeddings" in error
    async with ollama.AsyncClient(host=fleet.url) as client:
        with pytest.raises(ollama.ResponseError) as raised:
            await client.embed(model=ONE, input="a")
    assert raised.value.status_code == 501 and raised.value.error == error
