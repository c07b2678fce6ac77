"""Schemathesis over every route in tests/openapi.yaml, against a live ollamux over
loopback in front of a simulated Ollama box and a simulated llama-server.

Requests are generated from the document both ways: valid ones (positive) and ones that
break it (negative). Every answer is checked: no 5xx, a status the document lists, its
content type, and its body against the document's schema (the error shapes included).
Afterwards no slot is taken and no box was blamed for a client's bad input.

``model`` is narrowed to the fleet's models (and one unknown name) so that valid
requests reach the boxes instead of all ending in 404s.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests._hardening import MODELS, POST_ROUTES, Fleet, mixed_fleet, settled

DOCUMENT = Path(__file__).with_name("openapi.yaml")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Fields that set how much a simulated box generates: a broken document's huge numbers
# would only make the run long, not find more.
COUNTS = ("num_predict", "max_tokens", "max_completion_tokens")


def load_schema() -> Any:
    raw = yaml.safe_load(DOCUMENT.read_text())
    raw = copy.deepcopy(raw)
    raw["components"]["schemas"]["Model"] = {"type": "string", "enum": MODELS}
    return schemathesis.openapi.from_dict(raw)


def long_answer(body: object) -> bool:
    if isinstance(body, dict):
        for key, value in body.items():
            if key in COUNTS and isinstance(value, int | float) and value > 64:
                return True
            if long_answer(value):
                return True
    elif isinstance(body, list):
        return any(long_answer(item) for item in body)
    return False


def test_the_document_names_every_post_route() -> None:
    raw = yaml.safe_load(DOCUMENT.read_text())
    posts = {path for path, ops in raw["paths"].items() if "post" in ops}
    assert posts == set(POST_ROUTES)


@pytest.mark.soak
async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer() -> None:
    schema = load_schema()
    cases = st.one_of(
        schema.as_strategy(generation_mode=GenerationMode.POSITIVE),
        schema.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    def run(fleet: Fleet) -> None:
        with requests.Session() as session, httpx.Client(base_url=fleet.url) as http:

            @settings(
                max_examples=200,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases)
            def check(case: Any) -> None:
                assume(not long_answer(case.body))
                case.call_and_validate(base_url=fleet.url, session=session, checks=CHECKS)
                settled(http)

            check()
            status = settled(http)
            for ep in status["endpoints"]:
                assert ep["health"] == "healthy" and ep["breaker"] == "closed", ep

    async with mixed_fleet() as fleet:
        await asyncio.to_thread(run, fleet)
