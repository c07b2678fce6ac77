"""The ``shared_state`` config key: absent is one process; a bad value is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollamux.routing.settings import ConfigError, load_settings, parse_settings

BOX = {"endpoints": ["http://127.0.0.1:11434"]}


def test_absent_means_memory() -> None:
    assert parse_settings(BOX).shared_state.redis is None


def test_redis_url_with_a_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    path = tmp_path / "ollamux.yaml"
    path.write_text(
        "endpoints: [http://127.0.0.1:11434]\n"
        "shared_state:\n"
        "  redis: redis://:${REDIS_PASSWORD}@127.0.0.5:6379/2\n"
        "  lease_ttl: 10\n"
        "  replica: proxy-a\n"
    )
    shared = load_settings(path).shared_state
    assert shared.redis == "redis://:s3cret@127.0.0.5:6379/2"
    assert (shared.lease_ttl, shared.replica, shared.prefix) == (10.0, "proxy-a", "ollamux")
    assert "s3cret" not in repr(shared)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"redis": "http://127.0.0.5:6379"}, "shared_state.redis"),
        ({"redis": 6379}, "shared_state.redis has 6379"),
        ({"redis": "redis://h:1/0", "lease_ttl": 0.5}, "shared_state.lease_ttl"),
        ({"redis": "redis://h:1/0", "timeout": "fast"}, "shared_state.timeout"),
        ({"redis": "redis://h:1/0", "prefix": ""}, "shared_state.prefix"),
        ({"url": "redis://h:1/0"}, "unknown key shared_state.url"),
    ],
)
def test_bad_values_are_refused(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({**BOX, "shared_state": section})


def test_a_password_is_not_quoted_in_the_refusal() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_settings({**BOX, "shared_state": {"redis": "http://:hunter2@h:1"}})
    assert "hunter2" not in str(refused.value)
