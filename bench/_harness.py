"""What every bench script shares: processes on loopback, the load generator, CPU and
memory readings, and the JSON + human summary at the end.

Each server runs in its own process (the simulated box, ollamux, the minimal relays),
and the load generator (``_load.py``) in another, so none of them measures itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")


def parse(doc: str, defaults: dict[str, Any], smoke: dict[str, Any]) -> argparse.Namespace:
    """The common flags (--smoke, --json, --server) plus one flag per tunable."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, for CI")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--server", default=None, help="ollamux's --server (default: its own)")
    for key, value in defaults.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    args = parser.parse_args()
    QUIET_GATE["on"] = not args.smoke
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke[key] if args.smoke and key in smoke else value)
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class Proc:
    """A server in its own process, stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, name: str, argv: Sequence[str], ready: str, log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            list(argv), cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT
        )
        self.pid = self.popen.pid
        self._wait_ready(ready)

    def _wait_ready(self, url: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                break
            try:
                get_json(url, timeout=0.5)
                return
            except urllib.error.HTTPError:
                return  # it answers: that is all "ready" means
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-2000:]}")

    def cpu(self) -> float:
        """CPU seconds used so far (user + system)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()


class Stack(contextlib.ExitStack):
    """The processes of one bench run, in a temporary directory, all stopped on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(self.enter_context(tempfile.TemporaryDirectory(prefix="ollamux-bench-")))
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], ready: str) -> Proc:
        proc = Proc(name, argv, ready, self.dir / f"{name}.log")
        self.callback(proc.stop)
        self.procs.append(proc)
        return proc

    def box(self, name: str = "gpu-a", *, box_script: str | None = None, **flags: Any) -> Box:
        """A simulated Ollama box (``-m ollamux.backends.sim.ollama``) with llama3.2 loaded."""
        port = free_port()
        options = {
            "models": "llama3.2",
            "preload": "llama3.2",
            "num_parallel": 64,
            **flags,
        }
        argv = [PY, "-m", "ollamux.backends.sim.ollama"] if box_script is None else [PY, box_script]
        argv += ["--port", str(port), "--name", name]
        for key, value in options.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        url = f"http://127.0.0.1:{port}"
        return Box(self.start(name, argv, url + "/api/version"), url)

    def ollamux(
        self,
        boxes: Sequence[Box],
        *,
        server: str | None = None,
        name: str = "ollamux",
        **extra: Any,
    ) -> Ollamux:
        """ollamux in front of ``boxes``, started as a user would: ``python app.py``."""
        slots = extra.pop("slots", 64)
        endpoints = [{"url": b.url, "name": b.proc.name, "max_concurrent": slots} for b in boxes]
        config = {"endpoints": endpoints, **extra}
        path = self.dir / f"{name}.json"  # JSON is YAML
        path.write_text(json.dumps(config))
        port = free_port()
        argv = [PY, "app.py", "--config", str(path), "--port", str(port), "--log-level", "warning"]
        if server:
            argv += ["--server", server]
        url = f"http://127.0.0.1:{port}"
        proc = self.start(name, argv, url + "/router/status")
        wait_healthy(url, len(boxes))
        return Ollamux(proc, url)


class Box:
    def __init__(self, proc: Proc, url: str) -> None:
        self.proc, self.url = proc, url


class Ollamux:
    def __init__(self, proc: Proc, url: str) -> None:
        self.proc, self.url = proc, url


def wait_healthy(url: str, boxes: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = get_json(url + "/router/status")
        healthy = [e for e in status["endpoints"] if e.get("health") == "healthy"]
        if len(healthy) >= boxes:
            return
        time.sleep(0.05)
    raise RuntimeError(f"ollamux at {url} did not see {boxes} healthy boxes")


def busy_percent(seconds: float = 0.5) -> float:
    """How busy all cores were over ``seconds``, in % of one core (200 = two cores)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    cores = os.cpu_count() or 1
    return 100.0 * cores * (busy1 - busy0) / max(1, total1 - total0)


QUIET = {"waited_s": 0.0, "noisy_phases": 0}
QUIET_GATE = {"on": True}  # off for smoke runs


def wait_quiet(limit: float = 20.0, busy: float = 25.0, budget: float = 90.0) -> None:
    """Wait (up to ``limit`` s, and ``budget`` s in all) until the machine is idle between
    two phases: this machine may be shared, and a phase measured next to someone's test
    suite means little. The time waited and the phases that started on a busy machine
    anyway are reported with the results."""
    start = time.monotonic()
    limit = min(limit, max(0.0, budget - QUIET["waited_s"]))
    while busy_percent() > busy:
        if time.monotonic() - start > limit:
            QUIET["noisy_phases"] += 1
            break
    QUIET["waited_s"] = round(QUIET["waited_s"] + time.monotonic() - start, 1)


def load(mode: str, urls: Sequence[str], watch: Sequence[Proc] = (), **flags: Any) -> Any:
    """Run the load generator once; returns its JSON, plus the CPU share each watched
    process (and the generator itself) used while it ran."""
    gate = flags.pop("gate", True)  # False: the caller waited for a quiet machine
    argv = [PY, str(ROOT / "bench" / "_load.py"), mode]
    for url in urls:
        argv += ["--url", url]
    for key, value in flags.items():
        if value is False:
            continue
        argv += ["--" + key.replace("_", "-")] + ([] if value is True else [str(value)])
    if gate and QUIET_GATE["on"]:
        wait_quiet()
    before = [p.cpu() for p in watch]
    started = time.monotonic()
    usage_before = os.times()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
    usage_after = os.times()
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.decode()[-3000:]}")
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    generator = (usage_after.children_user + usage_after.children_system) - (
        usage_before.children_user + usage_before.children_system
    )
    used = {p.name: p.cpu() - b for p, b in zip(watch, before, strict=True)}
    used["load generator"] = generator
    result["cpu_percent"] = {name: round(100 * cpu / wall, 1) for name, cpu in used.items()}
    runs = result.get("runs")
    if mode == "capacity" and runs and len(runs) == 1 and len(runs[0]) == 1:
        # CPU time per request: steadier than requests/s on a machine that is not quiet.
        done = runs[0][0]["requests_total"]
        result["cpu_us_per_request"] = {n: round(1e6 * c / done, 1) for n, c in used.items()}
    return result


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "note": "box, ollamux and the load generator are separate processes sharing these cores",
    }


def report(title: str, args: argparse.Namespace, results: dict[str, Any], lines: list[str]) -> None:
    """Print the human summary, then write the JSON where asked."""
    doc = {
        "bench": title,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "smoke": args.smoke,
        "machine": machine(),
        "results": results,
        "quiet_gate": QUIET,
    }
    kind = "smoke run: tiny counts, figures mean nothing" if args.smoke else "full run"
    print(f"== {title} ({kind})")
    for line in lines:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    else:
        print(json.dumps(doc))


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    start = time.monotonic()
    try:
        yield box
    finally:
        box["seconds"] = round(time.monotonic() - start, 2)
