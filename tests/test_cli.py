"""The README's first command: `ollamux --demo` serves simulated boxes behind the proxy."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import ollama

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command() -> list[str]:
    exe = shutil.which("ollamux")
    return [exe] if exe else [sys.executable, str(REPO / "app.py")]


def test_demo_serves_a_working_cluster(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [*_command(), "--demo", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the demo did not start in 30 s"
            time.sleep(0.1)
        status = httpx.get(f"{base}/router/status", timeout=5).json()
        assert len(status["endpoints"]) == 3
        assert all(ep["health"] == "healthy" for ep in status["endpoints"])
        with ollama.Client(host=base) as client:
            assert "llama3.2:latest" in {m.model for m in client.list().models}
            reply = client.chat(
                model="llama3.2",
                messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 3},
            )
            assert reply.message.content
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.stdout.read().decode() if proc.stdout else ""
            if proc.stdout:
                proc.stdout.close()
    assert proc.returncode in (0, -signal.SIGINT)
    # The demo says where its simulated boxes listen, so curl can reach them directly.
    for name in ("gpu-a", "gpu-b", "gpu-c"):
        assert f"{name} (http://127.0.0.1:" in output, output


def test_file_changes_and_sighup_reload_the_config(tmp_path: Path) -> None:
    boxes = [_free_port(), _free_port()]
    path = tmp_path / "ollamux.yaml"
    path.write_text(f"endpoints: [http://127.0.0.1:{boxes[0]}]\n")
    port = _free_port()
    log = tmp_path / "ollamux.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_command(), "--config", str(path), "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for_endpoints(base, proc) == [f"127.0.0.1:{boxes[0]}"]
        path.write_text(f"endpoints: [http://127.0.0.1:{boxes[1]}]\n")  # the watcher sees it
        _wait(lambda: _endpoint_names(base) == [f"127.0.0.1:{boxes[1]}"], "file change")
        proc.send_signal(signal.SIGHUP)  # nothing changed on disk: only SIGHUP reloads now
        _wait(lambda: log.read_text().count("reloaded") == 2, "SIGHUP")
        assert proc.poll() is None  # SIGHUP reloads; it does not stop ollamux
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, f"{what} did not reload the config"
        time.sleep(0.1)


def _endpoint_names(base: str) -> list[str]:
    return [e["name"] for e in httpx.get(f"{base}/router/status", timeout=2).json()["endpoints"]]


def _wait_for_endpoints(base: str, proc: subprocess.Popen[bytes]) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        try:
            return _endpoint_names(base)
        except httpx.TransportError:
            assert proc.poll() is None, "ollamux exited"
            assert time.monotonic() < deadline, "ollamux did not start in 30 s"
            time.sleep(0.1)


def _run(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    done = _run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ollamux {version('ollamux')}"


def test_help_shows_the_defaults() -> None:
    done = _run("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "default: 12434" in text and "default: 127.0.0.1" in text, done.stdout
    assert "default: uvicorn" in text and "check" in text


def test_granian_without_its_extra_is_one_clear_line_before_anything_starts() -> None:
    import importlib.util

    if importlib.util.find_spec("granian") is not None:
        import pytest

        pytest.skip("granian is installed here: the missing-extra message cannot show")
    done = _run("--demo", "--server", "granian", "--port", str(_free_port()), timeout=20)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr  # one line
    assert "granian" in done.stderr and "pip install" in done.stderr
    assert "Traceback" not in done.stderr and "demo" not in done.stdout  # nothing started


def test_the_start_up_log_names_the_config_the_boxes_and_the_address(tmp_path: Path) -> None:
    box = f"http://127.0.0.1:{_free_port()}"
    path = tmp_path / "ollamux.yaml"
    path.write_text(f"endpoints:\n  - url: {box}\n    name: gpu-a\n")
    port = _free_port()
    log = tmp_path / "ollamux.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_command(), "--config", str(path), "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_endpoints(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    text = log.read_text()
    assert str(path) in text, text
    assert f"gpu-a ({box}, ollama)" in text, text
    assert f"listening on http://127.0.0.1:{port}" in text, text


def test_the_example_config_starts_as_is(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_A_KEY", "OLLAMUX_API_KEY")}
    port = _free_port()
    proc = subprocess.Popen(
        [*_command(), "--config", str(REPO / "ollamux.example.yaml"), "--port", str(port)],
        cwd=tmp_path,  # stats.path is relative: its file lands here
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        names = _wait_for_endpoints(base, proc)
        assert names[0] == "gpu-a" and len(names) >= 2
        # No client key needed: auth is a commented variant in the example.
        assert httpx.get(f"{base}/api/tags", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)
