"""Slot-aware routing against real llama-servers: slot counts read from ``/props``,
requests beyond the slots waiting or spilling over, a router-mode model that is not
loaded routed as "not loaded". Each test starts its own servers: loaded models and busy
slots are the point, so nothing is shared."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import pytest

from tests.realbox.conftest import (
    ONLY_ROUTER,
    SHARED,
    Fleet,
    LlamaServer,
    llama_server,
    models_dir,
    router_args,
    run_fleet,
    single_args,
)

LONG = 6000  # tokens: seconds of decoding, so a stream holds its slot until closed
CTX = 32768  # shared by a server's slots: room for LONG in each


@pytest.fixture
def servers(
    llama_bin: Path, tiny_model: Path, tmp_path: Path
) -> Iterator[tuple[LlamaServer, LlamaServer]]:
    """A single-model server with ``tiny-shared`` (3 slots) and a router with
    ``tiny-shared`` and ``tiny-router`` (4 slots each, none loaded)."""
    folder = models_dir(tiny_model, tmp_path / "models")
    with (
        llama_server(
            llama_bin, tmp_path, "single", single_args(tiny_model, SHARED, 3, CTX)
        ) as single,
        llama_server(llama_bin, tmp_path, "router", router_args(folder, 4, CTX)) as router,
    ):
        yield single, router


async def test_slot_counts_come_from_props(servers: tuple[LlamaServer, LlamaServer]) -> None:
    single, router = servers
    # The default (1) would be used if the boxes did not say: they do.
    async with run_fleet(
        {"single": single, "router": router}, max_concurrent_connections=1
    ) as fleet:
        shared = await fleet.model("single", SHARED)
        assert shared is not None and shared["loaded"] and shared["max"] == 3

        # Router mode: nothing loaded yet, so no /props of a model to ask.
        for name in (SHARED, ONLY_ROUTER):
            entry = await fleet.model("router", name)
            assert entry is not None and not entry["loaded"], entry

        reply = await fleet.http.post(
            "/v1/completions", json={"model": ONLY_ROUTER, "prompt": "hi", "max_tokens": 2}
        )
        assert reply.status_code == 200 and reply.headers["x-ollamux-endpoint"] == "router"

        async def router_slots_known() -> bool:
            entry = await fleet.model("router", ONLY_ROUTER)
            return entry is not None and entry["loaded"] and entry["max"] == 4

        await fleet.wait_for(router_slots_known)


async def test_beyond_the_slots_a_request_spills_to_a_box_that_has_not_loaded_it(
    servers: tuple[LlamaServer, LlamaServer],
) -> None:
    single, router = servers
    async with run_fleet({"single": single, "router": router}) as fleet:
        await spill(fleet)
        await fleet.wait_for(partial(all_free, fleet))


async def spill(fleet: Fleet) -> None:
    async with AsyncExitStack() as held:
        before = await fleet.model("router", SHARED)
        assert before is not None and not before["loaded"]
        # Loaded with a free slot wins while there is one: all three on the single box.
        streams = [
            await held.enter_async_context(fleet.held_stream(SHARED, LONG)) for _ in range(3)
        ]
        assert [s.headers["x-ollamux-endpoint"] for s in streams] == ["single"] * 3

        async def single_full() -> bool:
            entry = await fleet.model("single", SHARED)
            return entry is not None and entry["in_use"] == 3

        await fleet.wait_for(single_full)
        # The fourth finds no free slot there: the router has the model, not loaded, and
        # free slots, so it loads it there rather than wait.
        fourth = await held.enter_async_context(fleet.held_stream(SHARED, LONG))
        assert fourth.headers["x-ollamux-endpoint"] == "router"

        async def loaded_on_router() -> bool:
            entry = await fleet.model("router", SHARED)
            return entry is not None and entry["loaded"] and entry["in_use"] == 1

        await fleet.wait_for(loaded_on_router)


async def test_beyond_the_slots_a_request_waits_for_a_free_one(
    servers: tuple[LlamaServer, LlamaServer],
) -> None:
    single, _ = servers
    async with run_fleet({"single": single}) as fleet:
        async with AsyncExitStack() as held:
            streams = [
                await held.enter_async_context(fleet.held_stream(SHARED, LONG)) for _ in range(3)
            ]
            assert {s.headers["x-ollamux-endpoint"] for s in streams} == {"single"}
            body = {"model": SHARED, "prompt": "hi", "max_tokens": 3}
            waiting = asyncio.create_task(fleet.http.post("/v1/completions", json=body))

            async def one_waiting() -> bool:
                return bool((await fleet.status())["queue"]["waiting"] == 1)

            await fleet.wait_for(one_waiting)
            assert not waiting.done()
            await streams[0].aclose()  # hang up one stream: its slot frees
            reply = await asyncio.wait_for(waiting, 20)
            assert reply.status_code == 200 and reply.headers["x-ollamux-endpoint"] == "single"
            assert reply.json()["usage"]["completion_tokens"] == 3

        await fleet.wait_for(partial(all_free, fleet))


async def all_free(fleet: Fleet) -> bool:
    status = await fleet.status()
    in_use = sum(m["in_use"] for ep in status["endpoints"] for m in ep["models"])
    return bool(in_use == 0 and status["queue"]["waiting"] == 0)
