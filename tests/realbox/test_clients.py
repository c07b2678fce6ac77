"""More of the clients people point at an Ollama URL, through ollamux to real
llama-servers: LangChain's ``ChatOllama`` and ``ChatOpenAI``, and the ``ollama``
JavaScript client from npm (``tests/js``, installed by ``.ci/run`` with ``npm ci``)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from tests.realbox.conftest import ONE, ONLY_ROUTER, SIM_MODEL, Fleet, unavailable

JS = Path(__file__).resolve().parent.parent / "js"
PROMPT = [HumanMessage("tell me a story")]


async def test_langchain_chat_ollama(fleet: Fleet) -> None:
    llm = ChatOllama(base_url=fleet.url, model=ONE, num_predict=6)
    try:
        reply = await llm.ainvoke(PROMPT)
        assert isinstance(reply, AIMessage) and reply.content
        assert reply.response_metadata["done_reason"] == "length"
        assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 6

        chunks = [c async for c in llm.astream(PROMPT)]
        assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
        assert "".join(str(c.content) for c in chunks)
    finally:
        await llm._async_client.close()  # type: ignore[no-untyped-call]  # LangChain leaves
        llm._client.close()  # type: ignore[no-untyped-call]  # its clients open


async def test_langchain_chat_openai(fleet: Fleet) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        llm = ChatOpenAI(
            base_url=f"{fleet.url}/v1",
            api_key="unused",  # type: ignore[arg-type]
            model=ONLY_ROUTER,
            max_tokens=5,  # type: ignore[call-arg]
            max_retries=0,
            http_async_client=http,
        )
        reply = await llm.ainvoke(PROMPT)
        assert isinstance(reply, AIMessage) and reply.content
        assert reply.response_metadata["finish_reason"] == "length"
        assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 5

        chunks = [c async for c in llm.astream(PROMPT)]
        assert "".join(str(c.content) for c in chunks)
        assert any(c.response_metadata.get("finish_reason") == "length" for c in chunks)


async def test_ollama_javascript_client(fleet: Fleet) -> None:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "ollama").is_dir():
        unavailable("node or tests/js/node_modules missing: run `npm ci --prefix tests/js`")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node,
        str(JS / "ollama_client.mjs"),
        fleet.url,
        ONE,
        "7",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    seen = json.loads(out)

    listed = {m.removesuffix(":latest") for m in seen["models"]}
    assert {ONE, ONLY_ROUTER, SIM_MODEL.removesuffix(":latest")} <= listed
    assert ONE in {m.removesuffix(":latest") for m in seen["running"]}
    chat = seen["chat"]
    assert chat["model"] == ONE and chat["role"] == "assistant" and chat["content"]
    assert chat["done"] and chat["done_reason"] == "length" and chat["eval_count"] == 7
    stream = seen["stream"]
    assert stream["chunks"] > 2 and stream["content"] and stream["not_done_before_last"]
    assert stream["done"] and stream["done_reason"] == "length" and stream["eval_count"] == 7
