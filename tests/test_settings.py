"""The config file contract (README "Configuration"): shape, defaults, ${VAR}, refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ollamux.routing.settings import ConfigError, load_settings, parse_settings

REPO = Path(__file__).resolve().parent.parent


def test_full_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPU_A_KEY", "box-secret")
    monkeypatch.setenv("OLLAMUX_API_KEY", "client-secret")
    path = tmp_path / "ollamux.yaml"
    path.write_text(
        """
endpoints:
  - url: http://127.0.0.1:11434
    kind: ollama
    name: gpu-a
    max_concurrent: 4
    api_key: ${GPU_A_KEY}
  - http://127.0.0.2:11434
max_concurrent_connections: 3
priority_routing: true
conversation_affinity: false
auth:
  api_keys: [${OLLAMUX_API_KEY}]
"""
    )
    settings = load_settings(path)
    a, b = settings.endpoints
    assert (a.name, a.kind, a.max_concurrent, a.api_key) == ("gpu-a", "ollama", 4, "box-secret")
    assert (b.name, b.url, b.kind, b.max_concurrent) == (
        "127.0.0.2:11434",
        "http://127.0.0.2:11434",
        "ollama",
        None,
    )
    assert settings.slots(a) == 4 and settings.slots(b) == 3
    assert settings.priority_routing and not settings.conversation_affinity
    assert settings.api_keys == ("client-secret",)
    assert "box-secret" not in repr(settings) and "client-secret" not in repr(settings)


def test_scheduling_sections() -> None:
    settings = parse_settings(
        {
            "endpoints": ["http://127.0.0.1:11434"],
            "queue": {"enabled": False, "max_waiting": 10, "timeout": 2},
            "affinity": {"ttl": 60, "max_entries": 5, "max_wait": 0.5, "load_guard": 0.25},
            "failover": {"max_attempts": 2, "breaker_failures": 4},
        }
    )
    assert (settings.queue.enabled, settings.queue.max_waiting, settings.queue.timeout) == (
        False,
        10,
        2.0,
    )
    assert settings.affinity.max_entries == 5 and settings.affinity.load_guard == 0.25
    assert settings.failover.max_attempts == 2 and settings.failover.breaker_failures == 4
    assert settings.failover.breaker_backoff == 5.0  # untouched keys keep their defaults


def test_defaults() -> None:
    settings = parse_settings({"endpoints": ["http://127.0.0.1:11434/"]})
    assert settings.endpoints[0].url == "http://127.0.0.1:11434"
    assert settings.max_concurrent_connections == 2
    assert settings.conversation_affinity and not settings.priority_routing
    assert settings.api_keys == ()


def test_example_config_parses_as_is_with_no_keys_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GPU_A_KEY", "OLLAMUX_API_KEY", "ALICE_KEY"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings(REPO / "ollamux.example.yaml")
    assert len(settings.endpoints) >= 2
    assert settings.client_keys == ()  # a first run needs no client key
    assert all(ep.api_key is None for ep in settings.endpoints)


def test_the_examples_commented_keys_variant_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncommenting the lines marked ``#>`` switches keys on, as the file says."""
    monkeypatch.setenv("GPU_A_KEY", "box-key")
    monkeypatch.setenv("OLLAMUX_API_KEY", "client-key")
    text = (REPO / "ollamux.example.yaml").read_text()
    assert "#>" in text
    variant = tmp_path / "keys.yaml"
    variant.write_text(text.replace("#> ", "").replace("#>", ""))
    settings = load_settings(variant)
    assert settings.endpoints[0].api_key == "box-key"
    assert settings.api_keys == ("client-key",)


def test_nomyo_router_config_accepted_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        """
# nomyo-router config.yaml
endpoints:
  - http://127.0.0.1:11434
  - http://127.0.0.2:11434
  - https://api.example.com/v1
llama_server_endpoints:
  - http://127.0.0.3:8080/v1
max_concurrent_connections: 2
nomyo-router-api-key: "router-key"
api_keys:
  "http://127.0.0.1:11434": "ollama"
  "http://127.0.0.3:8080/v1": "llama-key"
"""
    )
    settings = load_settings(path)
    kinds = [(e.url, e.kind, e.api_key) for e in settings.endpoints]
    assert kinds == [
        ("http://127.0.0.1:11434", "ollama", "ollama"),
        ("http://127.0.0.2:11434", "ollama", None),
        # nomyo tells an OpenAI box by its /v1; ollamux adds the API paths itself.
        ("https://api.example.com", "openai", None),
        ("http://127.0.0.3:8080", "llama-server", "llama-key"),
    ]
    assert settings.api_keys == ("router-key",)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"endpoints": ["http://127.0.0.1:1"], "max_concurent_connections": 2},
            "unknown key max_concurent_connections",
        ),
        (
            {"endpoints": ["http://127.0.0.1:1"], "max_concurrent_connections": 0},
            "max_concurrent_connections has value 0",
        ),
        (
            {"endpoints": ["http://127.0.0.1:1"], "max_concurrent_connections": "2"},
            "max_concurrent_connections has value '2'",
        ),
        (
            {"endpoints": [{"url": "http://127.0.0.1:1", "kind": "vllm"}]},
            "endpoints[0].kind has value 'vllm'",
        ),
        (
            {"endpoints": [{"url": "127.0.0.1:11434"}]},
            "endpoints[0].url has value '127.0.0.1:11434'",
        ),
        (
            {"endpoints": [{"url": "http://127.0.0.1:1", "colour": "red"}]},
            "unknown key endpoints[0].colour",
        ),
        (
            {"endpoints": [{"url": "http://127.0.0.1:1", "max_concurrent": -1}]},
            "endpoints[0].max_concurrent has value -1",
        ),
        ({"endpoints": []}, "at least one box"),
        ({}, "endpoints is required"),
        (
            {"endpoints": ["http://127.0.0.1:1"], "priority_routing": "yes"},
            "priority_routing has value 'yes'",
        ),
        ({"endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:1"]}, "used twice"),
        (
            {"endpoints": ["http://127.0.0.1:1"], "timeouts": {"connect": 0}},
            "timeouts.connect has value 0; expected a number > 0",
        ),
        (
            {"endpoints": ["http://127.0.0.1:1"], "auth": {"api_keys": "k"}},
            "auth.api_keys has value 'k'",
        ),
        (
            {"endpoints": ["http://127.0.0.1:1"], "queue": {"enabled": "no"}},
            "queue.enabled has value 'no'",
        ),
        (
            {"endpoints": ["http://127.0.0.1:1"], "queue": {"max_waiting": 0}},
            "queue.max_waiting has value 0",
        ),
        ({"endpoints": ["http://127.0.0.1:1"], "queue": {"size": 3}}, "unknown key queue.size"),
        (
            {"endpoints": ["http://127.0.0.1:1"], "affinity": {"max_wait": -1}},
            "affinity.max_wait has value -1",
        ),
        (
            {"endpoints": ["http://127.0.0.1:1"], "failover": {"max_attempts": 1.5}},
            "failover.max_attempts has value 1.5",
        ),
    ],
)
def test_bad_values_are_refused_by_name(config: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_settings(config)


def test_missing_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.api_key refers to \$\{NOPE_NOT_SET\}"):
        parse_settings({"endpoints": [{"url": "http://127.0.0.1:1", "api_key": "${NOPE_NOT_SET}"}]})


def test_command_line_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("endpoints: [http://127.0.0.1:1]\nmax_concurrent_connections: lots\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "max_concurrent_connections has value 'lots'" in result.stderr


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"url": "http://127.0.0.9:11434/v1"},
            "endpoints[0].url has path '/v1'; ollamux adds the API paths itself: "
            "use http://127.0.0.9:11434",
        ),
        (
            {"url": "http://127.0.0.9:11434/api/"},
            "endpoints[0].url has path '/api/'; ollamux adds the API paths itself: "
            "use http://127.0.0.9:11434",
        ),
        (
            {"url": "http://127.0.0.9:8080/v1", "kind": "llama-server"},
            "endpoints[0].url has path '/v1'; ollamux adds the API paths itself: "
            "use http://127.0.0.9:8080",
        ),
        (
            {"url": "https://api.example.com/v1/", "kind": "openai"},
            "use https://api.example.com",
        ),
        (
            {"url": "http://127.0.0.9:11434/api/chat"},
            "use http://127.0.0.9:11434",
        ),
    ],
)
def test_a_url_whose_path_makes_the_probes_impossible_is_refused(
    entry: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"endpoints": [entry]})
    assert message in str(err.value)


def test_a_url_behind_a_reverse_proxy_prefix_is_kept() -> None:
    settings = parse_settings({"endpoints": ["http://127.0.0.9/ollama/"]})
    assert settings.endpoints[0].url == "http://127.0.0.9/ollama"


def test_every_section_key_is_in_the_readme_configuration_table() -> None:
    import dataclasses

    from ollamux.routing import settings as s

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    sections = {
        "timeouts": s.Timeouts,
        "probe": s.ProbeIntervals,
        "queue": s.Queue,
        "affinity": s.Affinity,
        "failover": s.Failover,
        "fairness": s.Fairness,
        "limits": s.Limits,
        "shutdown": s.Shutdown,
        "stats": s.StatsSettings,
        "routing": s.Routing,
    }
    missing = [
        f"{name}.{f.name}"
        for name, cls in sections.items()
        for f in dataclasses.fields(cls)
        if f"| `{name}.{f.name}` |" not in readme
    ]
    assert missing == []
