"""Model management through ollamux with the official `ollama` client, in front of
simulated boxes: pull with progress on several boxes (one failing), delete and copy,
create from an uploaded blob, push, load and unload through /api/generate and
/api/chat, and loading per box kind; then the pure decisions behind them."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import ollama
import orjson
import pytest

from ollamux.backends.model_ops.fleet import (
    BoxResult,
    Progress,
    is_unload,
    named,
    unload_boxes,
    verdict,
    zero_keep_alive,
)
from ollamux.backends.model_ops.io import load_model, unload_model
from ollamux.backends.sim.llama_server import LlamaConfig
from ollamux.backends.sim.ollama import SimConfig
from ollamux.backends.sim.store import layers
from ollamux.routing.api.services import Services
from ollamux.routing.errors import ModelNotFound, ProxyError
from ollamux.routing.state import BoxState, Fleet, Health
from tests.conftest import Cluster
from tests.test_llama_server import GGUF, mixed

MISSING = "pull model manifest: file does not exist"
NEW = "qwen3:0.6b"


def lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


async def _true(value: bool) -> bool:
    return value


# -- pull -----------------------------------------------------------------------------


async def test_pull_on_two_boxes_merges_progress_and_names_the_failing_box(cluster: Any) -> None:
    async with (
        cluster(SimConfig(name="gpu-a", pull_time=0.05), SimConfig(name="gpu-b")) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        c.box("gpu-b").faults.pull_error = MISSING
        parts = []
        with pytest.raises(ollama.ResponseError) as err:
            async for part in await client.pull(NEW, stream=True):
                parts.append(part)
        assert err.value.error == f"pull failed on gpu-b: {MISSING} (done on gpu-a)"
        statuses = [p.status for p in parts]
        assert f"gpu-b: error: {MISSING}" in statuses
        assert "gpu-a: success (1/2 boxes done)" in statuses and "success" not in statuses

        (weights, weights_size), (template, template_size), _ = layers(NEW)
        first = [p for p in parts if p.digest == weights]
        assert {p.total for p in first} == {2 * weights_size}  # both boxes, from line one
        done = [p.completed or 0 for p in first]
        assert done == sorted(done) and done[-1] == 2 * weights_size
        assert first[-1].status == f"pulling {weights[7:19]} (2/2 boxes done)"
        second = [p for p in parts if p.digest == template]  # gpu-b failed before it
        assert second[-1].completed == template_size and second[-1].total == 2 * template_size
        assert second[-1].status == f"pulling {template[7:19]} (1/2 boxes done)"

        assert NEW in c.box("gpu-a").store.models and NEW not in c.box("gpu-b").store.models
        assert NEW in {m.model for m in (await client.list()).models}  # seen at once


async def test_pull_everywhere_then_the_model_routes_at_once(cluster: Any) -> None:
    async with (
        cluster(SimConfig(name="gpu-a"), SimConfig(name="gpu-b")) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        assert (await client.pull(NEW)).status == "success"  # stream: false
        assert all(NEW in box.store.models for box in c.boxes)
        status = await c.status()
        assert all(NEW in {m["name"] for m in ep["models"]} for ep in status["endpoints"])
        reply = await client.generate(model=NEW, prompt="hi")
        assert reply.done and reply.response

        streamed = [p.status async for p in await client.pull("other:1b", stream=True)]
        assert streamed[-1] == "success"
        assert {"gpu-a: success (1/2 boxes done)", "gpu-b: success (2/2 boxes done)"} & set(
            streamed
        )
        c.box("gpu-a").faults.pull_error = "disk full"
        with pytest.raises(ollama.ResponseError) as err:
            await client.pull("third:1b")
        assert err.value.status_code == 500
        assert err.value.error == "pull failed on gpu-a: disk full (done on gpu-b)"


async def test_a_client_that_hangs_up_stops_the_pull_on_every_box(cluster: Any) -> None:
    slow = {"pull_time": 1.0}
    async with cluster(SimConfig(name="gpu-a", **slow), SimConfig(name="gpu-b", **slow)) as c:
        async with c.http.stream("POST", "/api/pull", json={"model": NEW}) as resp:
            async for _ in resp.aiter_lines():
                break  # one progress line, then the client is gone
        await asyncio.sleep(1.3)  # past the time the pulls would have taken
        assert not any(NEW in box.store.models for box in c.boxes)


async def test_the_endpoint_header_picks_the_boxes_and_one_box_is_bytes_through(
    cluster: Any,
) -> None:
    async with cluster(SimConfig(name="gpu-a"), SimConfig(name="gpu-b")) as c:
        via = await c.http.post(
            "/api/pull", json={"model": NEW}, headers={"X-Ollamux-Endpoint": "gpu-b"}
        )
        assert via.headers["x-ollamux-endpoint"] == "gpu-b"
        direct = await c.http.post(c.box("gpu-a").url + "/api/pull", json={"model": NEW})
        assert lines(via.text) == lines(direct.text)  # the box's own lines, unchanged
        assert NEW in c.box("gpu-b").store.models

        both = await c.http.post(
            "/api/pull",
            json={"model": "x:1b", "stream": False},
            headers={"X-Ollamux-Endpoint": "gpu-a,gpu-b"},
        )
        assert both.json() == {"status": "success"}
        assert both.headers["x-ollamux-endpoint"] == "gpu-a,gpu-b"
        for header in ("gpu-b,nope", ""):
            bad = await c.http.post(
                "/api/pull", json={"model": NEW}, headers={"X-Ollamux-Endpoint": header}
            )
            assert bad.status_code == 400
            assert ("nope" if header else "names no box") in bad.json()["error"]


# -- delete, copy ---------------------------------------------------------------------


async def test_delete_and_copy_go_where_the_model_is(cluster: Any) -> None:
    async with (
        cluster(
            SimConfig(name="gpu-a", models=["llama3.2", "qwen2.5:7b"]),
            SimConfig(name="gpu-b", models=["llama3.2"]),
            SimConfig(name="gpu-c", models=["mistral:7b"]),
        ) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        assert (await client.copy("llama3.2", "mine:1")).status == "success"
        have = {box.config.name for box in c.boxes if "mine:1" in box.store.models}
        assert have == {"gpu-a", "gpu-b"}
        assert "mine:1" in {m.model for m in (await client.list()).models}

        assert (await client.delete("llama3.2")).status == "success"
        assert not any("llama3.2:latest" in box.store.models for box in c.boxes)
        assert "llama3.2:latest" not in {m.model for m in (await client.list()).models}
        for call in (client.delete("llama3.2"), client.copy("nope", "x")):
            with pytest.raises(ollama.ResponseError) as err:
                await call
            assert err.value.status_code == 404

        one = await c.http.request(
            "DELETE",
            "/api/delete",
            json={"model": "mistral:7b"},
            headers={"X-Ollamux-Endpoint": "gpu-a"},
        )
        assert one.status_code == 404  # gpu-a's own answer: it does not have it
        assert one.json() == {"error": "model 'mistral:7b' not found"}
        assert "mistral:7b" in c.box("gpu-c").store.models


async def test_a_partial_delete_names_where_it_failed_and_where_it_worked(cluster: Any) -> None:
    models = ["llama3.2", "qwen2.5:7b"]
    async with (
        cluster(
            SimConfig(name="gpu-a", models=models), SimConfig(name="gpu-b", models=models)
        ) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        await c.box("gpu-b").stop()  # the prober has not noticed: the delete is sent there
        with pytest.raises(ollama.ResponseError) as err:
            await client.delete("llama3.2")
        assert err.value.status_code == 500
        assert err.value.error.startswith("delete failed on gpu-b: box gpu-b is unreachable")
        assert err.value.error.endswith("(done on gpu-a)")
        assert "llama3.2:latest" not in c.box("gpu-a").store.models

        await c.wait_for(lambda: _down(c, "gpu-b"))  # known down, and it had the model
        with pytest.raises(ollama.ResponseError) as err:
            await client.delete("qwen2.5:7b")
        assert err.value.error == "delete failed on gpu-b: box gpu-b is down (done on gpu-a)"


async def _down(c: Cluster, box: str) -> bool:
    status = await c.status()
    return any(ep["name"] == box and ep["health"] == "down" for ep in status["endpoints"])


# -- create, blobs, push --------------------------------------------------------------


async def test_create_from_a_local_file_reaches_every_box(cluster: Any, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    async with (
        cluster(SimConfig(name="gpu-a"), SimConfig(name="gpu-b")) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        assert (await c.http.head(f"/api/blobs/{digest}")).status_code == 404
        assert await client.create_blob(path) == digest
        assert all(box.store.blobs == {digest: len(data)} for box in c.boxes)
        head = await c.http.head(f"/api/blobs/{digest}")
        assert head.status_code == 200 and head.headers["x-ollamux-endpoint"] == "gpu-a,gpu-b"
        again = await c.http.post(f"/api/blobs/{digest}", content=data)
        assert again.status_code == 200  # every box had it: nothing was sent

        parts = [
            p.status
            async for p in await client.create(
                model="mine", files={"model.gguf": digest}, system="be brief", stream=True
            )
        ]
        assert parts[-1] == "success" and f"gpu-a: using existing layer {digest}" in parts
        derived = await client.create(model="mine-too", from_="mine")
        assert derived.status == "success"
        for box in c.boxes:
            assert {"mine:latest", "mine-too:latest"} <= set(box.store.models)
        reply = await client.chat(model="mine", messages=[{"role": "user", "content": "hi"}])
        assert reply.message.content


async def test_blob_uploads_report_boxes_that_failed(cluster: Any) -> None:
    data = os.urandom(50_000)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    async with cluster(SimConfig(name="gpu-a"), SimConfig(name="gpu-b")) as c:
        wrong = await c.http.post(f"/api/blobs/sha256:{'0' * 64}", content=data)
        assert wrong.status_code == 400  # both boxes said so
        assert wrong.json()["error"].startswith("blob upload failed on gpu-a, gpu-b: digest")
        bad = await c.http.post("/api/blobs/md5:abc", content=data)
        assert bad.status_code == 400 and "md5:abc" in bad.json()["error"]

        await c.box("gpu-b").stop()
        partial = await c.http.post(f"/api/blobs/{digest}", content=data)
        assert partial.status_code == 500
        assert "gpu-b" in partial.json()["error"] and "(done on gpu-a)" in partial.json()["error"]
        assert c.box("gpu-a").store.blobs == {digest: len(data)}

        create = await c.http.post(
            "/api/create",
            json={"model": "half", "files": {"m.gguf": digest}, "stream": False},
            headers={"X-Ollamux-Endpoint": "gpu-a"},
        )
        assert create.status_code == 200 and "half:latest" in c.box("gpu-a").store.models


async def test_push_goes_from_one_box_that_has_the_model(cluster: Any) -> None:
    async with (
        cluster(
            SimConfig(name="gpu-a", models=["llama3.2"]),
            SimConfig(name="gpu-b", models=["me/mine:latest"]),
        ) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        parts = [p async for p in await client.push("me/mine", stream=True)]
        assert parts[0].status == "retrieving manifest" and parts[-1].status == "success"
        assert c.box("gpu-b").store.pushed == ["me/mine:latest"]
        assert c.box("gpu-a").store.pushed == []
        assert (await client.push("me/mine")).status == "success"
        with pytest.raises(ollama.ResponseError) as err:
            await client.push("nobody/has-it")
        assert err.value.status_code == 404


# -- load and unload ------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [0, "0", "0s", "0m"])
async def test_keep_alive_zero_unloads_everywhere_it_is_loaded(
    cluster: Any, keep_alive: Any
) -> None:
    loaded = {"models": ["llama3.2", "qwen2.5:7b"], "preloaded": ["llama3.2", "qwen2.5:7b"]}
    async with (
        cluster(
            SimConfig(name="gpu-a", **loaded),
            SimConfig(name="gpu-b", **loaded),
            SimConfig(name="gpu-c", models=["llama3.2"]),
        ) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        answer = await client.generate(model="llama3.2", keep_alive=keep_alive)
        assert answer.done and answer.done_reason == "unload" and answer.response == ""
        assert [box.loaded_models() for box in c.boxes] == [["qwen2.5:7b"], ["qwen2.5:7b"], []]
        running = [(m.model) for m in (await client.ps()).models]
        assert running == ["qwen2.5:7b", "qwen2.5:7b"]  # at once, not after the next probe

        chat = await client.chat(model="qwen2.5:7b", messages=[], keep_alive=keep_alive)
        assert chat.done_reason == "unload" and chat.message.content == ""
        assert (await client.ps()).models == []
        with pytest.raises(ollama.ResponseError) as err:
            await client.generate(model="nope", keep_alive=keep_alive)
        assert err.value.status_code == 404


async def test_an_empty_prompt_loads_on_one_box_and_holds_a_slot_meanwhile(cluster: Any) -> None:
    async with (
        cluster(
            SimConfig(name="gpu-a", load_time=0.3), SimConfig(name="gpu-b", load_time=0.3)
        ) as c,
        ollama.AsyncClient(host=c.url) as client,
    ):
        loading = asyncio.create_task(client.generate(model="llama3.2"))
        await c.wait_for(lambda: _in_use(c, 1))
        answer = await loading
        assert answer.done_reason == "load"
        assert await c.in_use() == 0
        holders = [box.config.name for box in c.boxes if box.loaded_models()]
        assert len(holders) == 1
        await c.wait_for(lambda: _running(client, 1))
        again = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        assert again.done


async def _in_use(c: Cluster, n: int) -> bool:
    return await c.in_use() == n


async def _running(client: ollama.AsyncClient, n: int) -> bool:
    return len((await client.ps()).models) == n


async def test_load_and_unload_per_box_kind() -> None:
    async with mixed(
        ollama=(SimConfig(name="o", models=["llama3.2"]),),
        llama=(
            LlamaConfig(name="r", models=[GGUF], router=True),
            LlamaConfig(name="one", models=["org/Solo-GGUF:Q4_K_M"]),
        ),
    ) as m:
        svc: Services = m.app.state.services
        for box, model in (("o", "llama3.2"), ("r", GGUF), ("one", "org/Solo-GGUF:Q4_K_M")):
            result = await load_model(svc, box, model)
            assert result.ok, result
            assert svc.model_key(model) in svc.prober.fleet.by_name[box].loaded  # seen now
        assert m.ollama["o"].loaded_models() == ["llama3.2:latest"]
        assert m.llama["r"].loaded_models() == [GGUF]

        assert (await unload_model(svc, "o", "llama3.2")).ok
        assert m.ollama["o"].loaded_models() == []
        async with ollama.AsyncClient(host=m.url) as client:
            answer = await client.generate(model=GGUF, keep_alive=0)  # the router box unloads
        assert answer.done_reason == "unload" and m.llama["r"].loaded_models() == []
        assert GGUF not in svc.prober.fleet.by_name["r"].loaded

        unknown = await load_model(svc, "r", "org/None-GGUF:Q4_K_M")
        assert not unknown.ok and unknown.status == 404
        assert not (await unload_model(svc, "one", "org/Solo-GGUF:Q4_K_M")).ok  # not a router
        assert (await load_model(svc, "gone", "llama3.2")).status == 404


# -- the decisions, pure --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "zero"),
    [
        (0, True),
        (0.0, True),
        ("0", True),
        ("0s", True),
        ("0m", True),
        ("-0s", True),
        ("0h0m0s", True),
        (False, False),
        (None, False),
        (-1, False),
        ("5m", False),
        ("0.0", False),  # not a Go duration: Ollama refuses it, it is no unload
        ("0x", False),
        ([], False),
    ],
)
def test_zero_keep_alive(value: object, zero: bool) -> None:
    assert zero_keep_alive(value) is zero


def test_is_unload_needs_nothing_to_answer() -> None:
    assert is_unload(False, {"model": "m", "keep_alive": 0})
    assert is_unload(True, {"model": "m", "messages": [], "keep_alive": "0s"})
    assert not is_unload(False, {"model": "m", "prompt": "hi", "keep_alive": 0})
    assert not is_unload(True, {"model": "m", "messages": [{"role": "user"}], "keep_alive": 0})
    assert not is_unload(False, {"model": "m"})


def _ok(box: str, status: int = 200) -> BoxResult:
    return BoxResult(box, status)


def _no(box: str, status: int, error: str = "boom") -> BoxResult:
    return BoxResult(box, status, error)


@pytest.mark.parametrize(
    ("results", "missing_ok", "status", "message"),
    [
        ([_ok("a"), _ok("b")], False, None, None),
        ([_ok("a"), _no("b", 404)], True, None, None),
        ([_no("a", 404), _no("b", 404)], True, 404, 'model "m" not found'),
        ([_ok("a"), _no("b", 502, "down")], True, 500, "x failed on b: down (done on a)"),
        ([_no("a", 400, "bad"), _no("b", 400, "bad")], False, 400, "x failed on a, b: bad"),
        ([_no("a", 400, "bad"), _no("b", 504, "slow")], False, 502, "x failed on a: bad; b: slow"),
        ([_ok("a"), _no("b", 404)], False, 500, "x failed on b: boom (done on a)"),
    ],
)
def test_verdict(
    results: list[BoxResult], missing_ok: bool, status: int | None, message: str | None
) -> None:
    error = verdict("x", "m", results, missing_ok=missing_ok)
    if status is None:
        assert error is None
        return
    assert isinstance(error, ProxyError) and error.status == status and error.message == message
    assert isinstance(error, ModelNotFound) == (status == 404)


def test_progress_sums_a_layer_over_boxes_from_the_first_line() -> None:
    progress = Progress("pull", ["a", "b", "c"])
    layer = {"status": "pulling 123", "digest": "sha256:123"}
    assert progress.line("a", {"status": "pulling manifest"}) == {"status": "a: pulling manifest"}
    assert progress.line("a", {**layer, "total": 100}) == {
        **layer,
        "status": "pulling 123 (0/3 boxes done)",
        "total": 300,
    }
    assert progress.line("b", {**layer, "total": 100, "completed": 40}) == {
        **layer,
        "status": "pulling 123 (0/3 boxes done)",
        "total": 300,
        "completed": 40,
    }
    out = progress.line("a", {**layer, "total": 100, "completed": 100})
    assert (
        out is not None and out["completed"] == 140 and out["status"].endswith("(1/3 boxes done)")
    )
    assert progress.line("a", {"status": "success"}) == {"status": "a: success (1/3 boxes done)"}
    assert progress.line("a", {"status": "late"}) is None  # a finished box says no more
    assert progress.line("b", {"error": "disk full"}) == {"status": "b: error: disk full"}
    assert progress.end("c") == {"status": "c: error: box c ended the pull unfinished"}
    assert progress.end("a") is None
    assert progress.final() == {
        "error": "pull failed on b: disk full; c: box c ended the pull unfinished (done on a)"
    }
    only = Progress("create", ["a"])
    only.line("a", {"status": "success"})
    assert only.final() == {"status": "success"} and only.error() is None


def _box(name: str, kind: Any = "ollama", **state: Any) -> BoxState:
    return BoxState(name=name, url="", kind=kind, index=0, priority=0, slots=2, **state)


def test_targets_from_the_header_and_from_the_fleet() -> None:
    up = {"health": Health.HEALTHY}
    fleet = Fleet.of(
        (
            _box("a", models=frozenset({"m:latest"}), **up),
            _box("b", loaded=frozenset({"m:latest"}), **up),
            _box("c", models=frozenset({"m:latest"}), health=Health.DOWN),
            _box("l", "llama-server", loaded=frozenset({"m:latest"}), **up),
            _box("o", "openai", loaded=frozenset({"m:latest"}), **up),
        )
    )
    assert named(fleet, "b, a,b") == ("b", "a")
    with pytest.raises(ProxyError) as err:
        named(fleet, "a,zz,yy")
    assert err.value.status == 400 and "zz, yy" in err.value.message
    assert unload_boxes(fleet, "m:latest") == ("a", "b", "l")
