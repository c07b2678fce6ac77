"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml)
are kept, and the decision core's contract names every module of the core."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return found


def test_every_module_of_the_decision_core_is_held_to_its_contract() -> None:
    core = next(c for c in contracts() if "decision core" in str(c["name"]))
    listed = set(core["source_modules"])  # type: ignore[call-overload]
    modules = {
        f"ollamux.routing.{p.stem}" for p in (ROOT / "routing").glob("*.py") if p.stem != "__init__"
    }
    assert modules - listed == set(), "add the new core module to the contract"
    assert listed - modules == set(), "the contract names a module that is gone"


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")
