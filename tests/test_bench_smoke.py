"""The ASGI server behind ``--server`` (routing/api/server.py), chosen by bench/ figures.

The benchmarks themselves are smoke-run by ``.ci/run`` (``bench/*.py --smoke``); nothing
here, or anywhere in the suite, asserts on timings.
"""

from __future__ import annotations

import pytest

from ollamux.app import parse_args
from ollamux.routing.api import server


def test_uvicorn_is_the_default_server() -> None:
    assert server.DEFAULT_SERVER == "uvicorn"
    assert parse_args([]).server == "uvicorn"


def test_granian_can_be_chosen() -> None:
    assert parse_args(["--server", "granian"]).server == "granian"


def test_an_unknown_server_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--server", "hypercorn"])
    assert exc.value.code == 2
    assert "--server" in capsys.readouterr().err
