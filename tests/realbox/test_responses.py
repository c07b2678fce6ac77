"""The Responses API through ollamux to a real llama-server: bytes through when the built
server serves /v1/responses, else translated to chat completions after its 404 (learned,
not counted as a failure). Either way the official SDK gets a response and its events."""

from __future__ import annotations

import httpx
from openai import AsyncOpenAI

from ollamux.routing.breaker import BreakerState
from tests.realbox.conftest import ONE, Fleet, LlamaServer


async def _serves_responses(server: LlamaServer) -> bool:
    async with httpx.AsyncClient(trust_env=False) as http:
        resp = await http.post(
            f"{server.url}/v1/responses", json={"model": ONE, "input": "hi", "max_output_tokens": 2}
        )
    return resp.status_code != 404


async def test_responses_on_a_real_llama_server(fleet: Fleet, llama_one: LlamaServer) -> None:
    serves = await _serves_responses(llama_one)
    async with AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0) as sdk:
        answer = await sdk.responses.create(model=ONE, input="tell me a story", max_output_tokens=7)
        assert answer.output_text
        assert answer.usage is not None and answer.usage.output_tokens == 7
        stream = await sdk.responses.create(
            model=ONE, input="tell me a story", max_output_tokens=9, stream=True
        )
        events = [event async for event in stream]
    types = [e.type for e in events]
    assert types[0] == "response.created" and "response.output_text.delta" in types
    assert types[-1] in ("response.completed", "response.incomplete")
    state = fleet.app.state.services.prober.fleet.by_name["llama-one"]
    assert ("/v1/responses" in state.lacking) is not serves
    assert state.breaker is BreakerState.CLOSED


async def test_responses_translated_for_a_real_llama_server(fleet: Fleet) -> None:
    """As for a build without the route: the request goes as a chat completion."""
    fleet.app.state.services.prober.lacks("llama-one", "/v1/responses")
    async with AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0) as sdk:
        answer = await sdk.responses.create(
            model=ONE, instructions="be brief", input="tell me a story", max_output_tokens=5
        )
        assert answer.output_text and answer.status == "incomplete"  # it ran to its limit
        assert answer.usage is not None and answer.usage.output_tokens == 5
        stream = await sdk.responses.create(
            model=ONE, input="tell me a story", max_output_tokens=6, stream=True
        )
        events = [event async for event in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == deltas  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))
