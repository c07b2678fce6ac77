"""The wheel installs anywhere: built from the repository, installed into a fresh venv
(no ``-e``), ``ollamux --demo`` serves the dashboard and its scripts, and the installed
distribution claims no generic top-level import name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.package


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("ollamux-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its dependencies; returns its bin/ folder."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        timeout=600,
    )
    return bin_dir


def test_the_wheel_holds_one_package_and_the_dashboard(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"ollamux", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for needed in ("ollamux/app.py", "ollamux/static/index.html", "ollamux/static/dashboard.js"):
        assert needed in names
    assert not any(n.startswith(("ollamux/tests/", "ollamux/bench/")) for n in names)


def test_no_generic_module_names_are_importable_from_the_install(installed: Path) -> None:
    probe = (
        "import importlib.util as u, ollamux.routing.choose;"
        "print([m for m in ('app', 'routing', 'backends') if u.find_spec(m)])"
    )
    out = subprocess.run(
        [str(installed / "python"), "-c", probe],
        cwd=installed,  # not the repository: nothing of it on sys.path
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def demo(installed: Path, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = tmp_path / "ollamux.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [str(installed / "ollamux"), "--demo", "--no-demo-traffic", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/router/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ollamux --demo from the wheel did not start:\n{log.read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_installed_command_serves_the_dashboard_and_its_scripts(demo: str) -> None:
    with urllib.request.urlopen(demo + "/dashboard", timeout=10) as page:
        assert page.status == 200 and b"<script" in page.read()
    with urllib.request.urlopen(demo + "/static/dashboard.js", timeout=10) as script:
        assert script.status == 200
        assert script.headers["content-type"].startswith("text/javascript")
    with urllib.request.urlopen(demo + "/router/status", timeout=10) as status:
        assert b'"endpoints"' in status.read()
