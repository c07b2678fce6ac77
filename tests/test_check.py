"""``ollamux check``: parse the config, probe every box once, print a table, and exit
non-zero when something is wrong. The real command, against real boxes on loopback."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ollamux.backends.sim.llama_server import LlamaConfig, SimLlama
from ollamux.backends.sim.ollama import SimBox, SimConfig
from tests.test_cli import _command


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def check(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *_command(),
        "check",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_check_prints_each_box_and_fails_when_one_is_wrong(tmp_path: Path) -> None:
    a_cfg = SimConfig(name="a", models=["llama3.2", "qwen3"], preloaded=["llama3.2"])
    async with SimBox(a_cfg) as a, SimLlama(LlamaConfig(name="l")) as llama:
        path = tmp_path / "ollamux.yaml"
        path.write_text(
            "endpoints:\n"
            f"  - {{url: '{a.url}', name: gpu-a}}\n"
            f"  - {{url: '{llama.url}', name: gpu-l, kind: llama-server}}\n"
            f"  - {{url: 'http://127.0.0.1:{closed_port()}', name: gpu-z}}\n"
        )
        code, out, _ = await check("--config", str(path), cwd=tmp_path)
        assert code == 1, out
        assert out.startswith(f"# config: {path}\n"), out
        lines = out.splitlines()[1:]
        header = lines[0].split()
        assert header == ["box", "kind", "reachable", "version", "models", "loaded"]
        rows = {line.split()[0]: line.split() for line in lines[1:4]}
        assert rows["gpu-a"][:5] == ["gpu-a", "ollama", "yes", "0.12.6", "2"]
        assert rows["gpu-a"][5] == "llama3.2:latest"
        assert rows["gpu-l"][:3] == ["gpu-l", "llama-server", "yes"]
        assert rows["gpu-z"][:3] == ["gpu-z", "ollama", "no"]
        assert any(line.startswith("gpu-z: box gpu-z is unreachable") for line in lines[4:]), out

        # Only boxes that answer: exit 0. ./ollamux.yaml is the default config.
        path.write_text(f"endpoints:\n  - {{url: '{a.url}', name: gpu-a}}\n")
        code, out, err = await check(cwd=tmp_path)
        assert code == 0, out + err
        assert "gpu-a" in out


async def test_check_refuses_a_bad_config_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("endpoints:\n  - http://127.0.0.1:11434/v1\n")
    code, _, err = await check("--config", str(path), cwd=tmp_path)
    assert code == 2
    assert "endpoints[0].url has path '/v1'" in err
