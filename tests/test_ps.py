"""/api/ps lists a model once per box that has it loaded, and says which box: in a field
clients ignore, so ``ollama ps`` and the official client still read the answer."""

from __future__ import annotations

from typing import Any

import ollama

from ollamux.backends.sim.ollama import SimConfig

M = "llama3.2:latest"


async def test_each_running_model_names_its_box_and_the_client_still_parses_it(
    cluster: Any,
) -> None:
    async with cluster(
        SimConfig(name="gpu-a", preloaded=[M]), SimConfig(name="gpu-b", preloaded=[M])
    ) as c:
        raw = (await c.http.get("/api/ps")).json()["models"]
        assert sorted((m["name"], m["ollamux_endpoint"]) for m in raw) == [
            (M, "gpu-a"),
            (M, "gpu-b"),
        ]
        async with ollama.AsyncClient(host=c.url) as client:
            listed = await client.ps()
        assert [m.model for m in listed.models] == [M, M]
        assert all(m.size and m.expires_at for m in listed.models)
