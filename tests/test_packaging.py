"""What ships: the wheel the Containerfile installs and the command it runs, and the
systemd unit in docs/. Container images cannot be built here (no base image can be
pulled), so the wheel is built and installed apart, and the image's own command is run
from it, on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.test_cli import _free_port, _wait_for_endpoints

REPO = Path(__file__).resolve().parent.parent


def _containerfile() -> tuple[str, list[str]]:
    text = (REPO / "Containerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None, "the Containerfile has a CMD in exec form"
    return text, json.loads(cmd.group(1))


@pytest.mark.package
def test_the_containerfile_installs_the_wheel_and_its_command_serves(tmp_path: Path) -> None:
    text, cmd = _containerfile()
    assert "pip wheel" in text and re.search(r"pip install .*ollamux-\*\.whl", text)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(dist)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("ollamux-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ollamux/app.py" in names and "ollamux/static/index.html" in names
    entry = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "ollamux = ollamux.app:main" in entry
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        check=True,
        capture_output=True,
    )
    # The image's CMD, with the config where the container mounts it and, here, loopback.
    assert cmd[0] == "ollamux"
    args = cmd[1:]
    config = tmp_path / "ollamux.yaml"
    config.write_text(f"endpoints: [http://127.0.0.1:{_free_port()}]\n")
    args[args.index("--config") + 1] = str(config)
    args[args.index("--host") + 1] = "127.0.0.1"
    port = _free_port()
    args[args.index("--port") + 1] = str(port)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import ollamux.app as a; print(a.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(site)), where.stdout  # the wheel's copy, not the tree
    launcher = "import sys; from ollamux.app import main; sys.argv[0] = 'ollamux'; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for_endpoints(f"http://127.0.0.1:{port}", proc)
        dashboard = httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=5)
        assert dashboard.status_code == 200  # the static files came with the wheel
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here: the unit's syntax is unchecked")
    unit = (REPO / "docs" / "ollamux.service").read_text()
    start = re.search(r"^ExecStart=(\S+)", unit, re.M)
    assert start is not None and start.group(1) == "/opt/ollamux/bin/ollamux"
    exe = shutil.which("ollamux") or str(Path(sys.executable).parent / "ollamux")
    # verify checks that ExecStart exists: point it at this machine's ollamux.
    copy = tmp_path / "ollamux.service"
    copy.write_text(unit.replace(start.group(1), exe))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    # It exits 0 on unknown keys and bad values too: any line about the unit is a fault.
    assert done.returncode == 0 and "ollamux.service" not in done.stderr, done.stderr
    # The command line it runs is one ollamux takes.
    args = unit.split("ExecStart=", 1)[1].splitlines()[0].split()[1:]
    assert args[:2] == ["--config", "/etc/ollamux/ollamux.yaml"] and "--host" in args
