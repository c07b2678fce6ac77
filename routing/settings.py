"""Settings: the YAML config file parsed once, at the edge, into frozen dataclasses.

Errors name the key and the value (``ConfigError``), so a typo is found at start, not at
the first request. Two shapes are accepted: ollamux's own (see README "Configuration")
and nomyo-router's ``config.yaml``, unchanged, so its users can switch.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args
from urllib.parse import urlsplit

import yaml

Kind = Literal["ollama", "llama-server", "openai"]
KINDS: tuple[str, ...] = get_args(Kind)
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
T = TypeVar("T")


class ConfigError(ValueError):
    """A config file that cannot be served: the message quotes the key and the value."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    name: str
    kind: Kind = "ollama"
    max_concurrent: int | None = None  # None: the settings' default (or the box's own slots)
    api_key: str | None = field(default=None, repr=False)
    priority: int = 0  # lower is preferred when priority routing is on
    weight: float = 1.0  # share of traffic under routing.strategy weighted-random
    rpm_limit: int | None = None  # requests a minute the box accepts (remote APIs)
    tpm_limit: int | None = None  # tokens a minute the box accepts


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 300.0  # a cold model load can take minutes
    idle: float = 120.0  # between two chunks of one response


@dataclass(frozen=True)
class ProbeIntervals:
    tags: float = 30.0
    ps: float = 2.0
    timeout: float = 5.0
    max_backoff: float = 60.0


@dataclass(frozen=True)
class Queue:
    enabled: bool = True  # off: a request with no free slot goes to the least saturated box
    max_waiting: int = 1024
    timeout: float = 300.0  # seconds a request may wait for a slot


@dataclass(frozen=True)
class Affinity:
    ttl: float = 1800.0  # seconds a conversation is remembered after its last turn
    max_entries: int = 10000
    max_wait: float = 1.0  # seconds to wait for the conversation's box to free a slot
    load_guard: float = 0.5  # give up the box when its load exceeds the least busy by this


@dataclass(frozen=True)
class Failover:
    max_attempts: int = 3  # boxes tried for one request before its first byte
    breaker_failures: int = 3  # failures in a row that open a box's breaker
    breaker_backoff: float = 5.0  # seconds open before a trial request; doubles
    breaker_max_backoff: float = 60.0


Strategy = Literal[
    "default", "least-busy", "round-robin", "weighted-random", "latency", "usage", "fastest"
]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


@dataclass(frozen=True)
class Routing:
    strategy: Strategy = "default"
    cooldown: float = 30.0  # seconds a box rests after a 429 that names no Retry-After


@dataclass(frozen=True)
class Fairness:
    enabled: bool = True  # waiting requests go first to the user served least lately
    window: float = 300.0  # seconds of service that count
    input_weight: float = 1.0  # weight of a prompt token
    output_weight: float = 2.0  # weight of a generated token
    max_waiting_share: float = 0.5  # of queue.max_waiting, for one user


@dataclass(frozen=True)
class StatsSettings:
    path: str | None = None  # SQLite file for totals and history; None: memory only
    history: int = 1000  # recent requests kept in the file
    latency_bound: float = 2.0  # max_concurrent suggestion: per-token slowdown allowed


@dataclass(frozen=True)
class SharedState:
    """Replicas that name the same Redis share one fleet (README "Running several
    replicas"); without it the state lives in this process's memory."""

    redis: str | None = field(default=None, repr=False)  # may carry a password
    lease_ttl: float = 15.0  # seconds a dead replica's slots stay taken, at most
    prefix: str = "ollamux"  # of every Redis key: fleets may share one Redis
    replica: str | None = None  # this replica's name in the registry (default host:port)
    timeout: float = 0.5  # seconds a Redis call may take before local accounting


@dataclass(frozen=True)
class ClientKey:
    """A key clients present to ollamux: logs and the dashboard show its name, never it."""

    name: str
    key: str = field(repr=False)
    admin: bool = False  # may also manage the fleet (drain, reload, pull, delete, ...)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024 * 1024  # a request body (images are big)
    max_header_bytes: int = 64 * 1024  # a request's headers, names and values together
    max_connections: int = 1024  # client requests served at once, streams included
    head_timeout: float = 10.0  # seconds for a request head to arrive, from its first byte
    body_timeout: float = 60.0  # seconds for a request body to arrive, from its head
    max_connections_per_client: int = 64  # open connections from one client address
    max_requests_per_client: int = 256  # requests in flight from one client address
    max_box_body_bytes: int = 128 * 1024 * 1024  # a box's answer read whole (not streamed)
    max_box_event_bytes: int = 16 * 1024 * 1024  # one line or event of a translated stream
    # Proxies whose X-Forwarded-For names the client (their own connections are not capped).
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Shutdown:
    grace: float = 30.0  # seconds in-flight streams may go on after SIGTERM


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[Endpoint, ...]
    max_concurrent_connections: int = 2
    priority_routing: bool = False
    conversation_affinity: bool = True
    client_keys: tuple[ClientKey, ...] = field(default=(), repr=False)
    timeouts: Timeouts = Timeouts()
    probe: ProbeIntervals = ProbeIntervals()
    queue: Queue = Queue()
    affinity: Affinity = Affinity()
    failover: Failover = Failover()
    # A box's own model id -> the model it is the same as (one model to route).
    aliases: tuple[tuple[str, str], ...] = ()
    stats: StatsSettings = StatsSettings()
    routing: Routing = Routing()
    fairness: Fairness = Fairness()
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call; none: CORS off
    limits: Limits = Limits()
    shutdown: Shutdown = Shutdown()
    shared_state: SharedState = SharedState()

    def slots(self, endpoint: Endpoint) -> int:
        return endpoint.max_concurrent or self.max_concurrent_connections

    @property
    def api_keys(self) -> tuple[str, ...]:
        return tuple(k.key for k in self.client_keys)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# `[${KEY}]` is not valid YAML (`{` opens a mapping), yet it is the natural way to write a
# list of secrets: variables are swapped for plain-scalar markers before parsing, and
# read from the environment after.
_MARK = re.compile(r"__ollamux_env\.([A-Za-z_][A-Za-z0-9_]*)\.__")
_TOP_KEYS = {
    "endpoints",
    "max_concurrent_connections",
    "priority_routing",
    "conversation_affinity",
    "auth",
    "timeouts",
    "probe",
    "queue",
    "affinity",
    "failover",
    "aliases",
    "stats",
    "routing",
    "fairness",
    "cors",
    "limits",
    "shutdown",
    "shared_state",
}
_NOMYO_KEYS = {
    "endpoints",
    "llama_server_endpoints",
    "max_concurrent_connections",
    "api_keys",
    "nomyo-router-api-key",
}
_ENDPOINT_KEYS = {
    "url",
    "kind",
    "name",
    "max_concurrent",
    "api_key",
    "priority",
    "weight",
    "rpm_limit",
    "tpm_limit",
}


def load_settings(path: str | Path) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from exc
    try:
        raw = yaml.safe_load(_VAR.sub(r"__ollamux_env.\1.__", text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_settings({} if raw is None else raw)


def default_settings() -> Settings:
    return parse_settings({"endpoints": [DEFAULT_OLLAMA_URL]})


def parse_settings(raw: object) -> Settings:
    raw = _interpolate(raw, "")
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys, got {_show(raw)}")
    if _is_nomyo(raw):
        return _parse_nomyo(raw)
    _refuse_unknown(raw, _TOP_KEYS, "")
    endpoints = _parse_endpoints(_require(raw, "endpoints", list, ""))
    auth = _mapping(raw.get("auth", {}), "auth")
    _refuse_unknown(auth, {"api_keys"}, "auth.")
    return Settings(
        endpoints=endpoints,
        max_concurrent_connections=_positive_int(raw, "max_concurrent_connections", 2, ""),
        priority_routing=_bool(raw, "priority_routing", False),
        conversation_affinity=_bool(raw, "conversation_affinity", True),
        client_keys=_parse_client_keys(auth.get("api_keys") or []),
        timeouts=_parse_section(raw, "timeouts", Timeouts),
        probe=_parse_section(raw, "probe", ProbeIntervals),
        queue=_parse_section(raw, "queue", Queue),
        affinity=_parse_section(raw, "affinity", Affinity),
        failover=_parse_section(raw, "failover", Failover),
        aliases=_parse_aliases(raw.get("aliases") or {}),
        stats=_parse_stats(raw.get("stats", {})),
        routing=_parse_routing(raw.get("routing", {})),
        fairness=_parse_section(raw, "fairness", Fairness),
        cors_origins=_parse_cors(raw.get("cors", {})),
        limits=_parse_limits(raw.get("limits", {})),
        shutdown=_parse_section(raw, "shutdown", Shutdown),
        shared_state=_parse_shared_state(raw.get("shared_state", {})),
    )


def _parse_shared_state(raw: object) -> SharedState:
    section = _mapping(raw, "shared_state")
    _refuse_unknown(section, set(SharedState.__dataclass_fields__), "shared_state.")
    url = section.get("redis")
    if url is not None:
        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
        if scheme not in ("redis", "rediss", "unix"):
            shown = "a URL" if isinstance(url, str) else repr(url)  # it may hold a password
            raise ConfigError(
                f"shared_state.redis has {shown} that is not redis://HOST:PORT/DB "
                "(or rediss://, unix://)"
            )
    strings: dict[str, Any] = {}
    for key in ("prefix", "replica"):
        value = section.get(key, getattr(SharedState, key))
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"shared_state.{key} has value {value!r}; expected a name")
        strings[key] = value
    numbers: dict[str, Any] = {}
    for key in ("lease_ttl", "timeout"):
        value = section.get(key, getattr(SharedState, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"shared_state.{key} has value {value!r}; expected a number > 0")
        numbers[key] = float(value)
    if numbers["lease_ttl"] < 1:
        raise ConfigError(
            f"shared_state.lease_ttl has value {numbers['lease_ttl']!r}; expected at least 1 s"
        )
    return SharedState(redis=url, **strings, **numbers)


def _parse_client_keys(raw: object) -> tuple[ClientKey, ...]:
    """``[key, ...]`` (named key-1, key-2, ... by position) or ``[{name, key}, ...]``.
    An empty string (an empty ``${VAR}``) is no key; an empty key in a mapping is an
    error, since dropping it could silently switch client auth off."""
    keys: list[ClientKey] = []
    for i, entry in enumerate(_list(raw, "auth.api_keys")):
        where = f"auth.api_keys[{i}]"
        if isinstance(entry, dict):
            _refuse_unknown(entry, {"name", "key", "admin"}, f"{where}.")
            name, key = entry.get("name"), entry.get("key")
            admin = _bool(entry, "admin", False, f"{where}.admin")
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{where}.name has value {name!r}; expected a name")
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{where}.key must be a non-empty string")
            keys.append(ClientKey(name.strip(), key, admin))
        elif isinstance(entry, str):
            if entry:
                keys.append(ClientKey(f"key-{i + 1}", entry))
        else:
            raise ConfigError(f"{where} must be a string or a mapping with name and key")
    names = [k.name for k in keys]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"auth.api_keys: the name {name!r} is used twice")
    if len({k.key for k in keys}) < len(keys):
        raise ConfigError("auth.api_keys: one key is listed twice")
    return tuple(keys)


def _parse_limits(raw: object) -> Limits:
    section = dict(_mapping(raw, "limits"))
    proxies = section.pop("trusted_proxies", None)
    limits = _parse_section({"limits": section}, "limits", Limits)
    if proxies is None:
        return limits
    for i, proxy in enumerate(_list(proxies, "limits.trusted_proxies")):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(
                f"limits.trusted_proxies[{i}] has value {_show(proxy)}; expected an IP "
                "address or network like 10.0.0.0/8"
            ) from None
    return replace(limits, trusted_proxies=tuple(proxies))


def _parse_cors(raw: object) -> tuple[str, ...]:
    section = _mapping(raw, "cors")
    _refuse_unknown(section, {"origins"}, "cors.")
    origins = _list(section.get("origins") or [], "cors.origins")
    for i, origin in enumerate(origins):
        parts = urlsplit(origin) if isinstance(origin, str) else None
        if origin == "*" or (
            parts is not None
            and parts.scheme in ("http", "https")
            and parts.hostname
            and not parts.path.strip("/")
            and not parts.query
        ):
            continue
        raise ConfigError(
            f"cors.origins[{i}] has value {_show(origin)}; expected an origin like "
            "https://app.example.com, or *"
        )
    return tuple(o if o == "*" else o.rstrip("/") for o in origins)


def _parse_aliases(raw: object) -> tuple[tuple[str, str], ...]:
    pairs = []
    for own, name in _mapping(raw, "aliases").items():
        if not isinstance(own, str) or not own or not isinstance(name, str) or not name:
            raise ConfigError(f"aliases.{own} has value {name!r}; expected a model name")
        pairs.append((own, name))
    return tuple(pairs)


def _parse_routing(raw: object) -> Routing:
    section = _mapping(raw, "routing")
    _refuse_unknown(section, {"strategy", "cooldown"}, "routing.")
    strategy = section.get("strategy", "default")
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"routing.strategy has value {strategy!r}; expected one of {', '.join(STRATEGIES)}"
        )
    cooldown = section.get("cooldown", Routing.cooldown)
    if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) or cooldown <= 0:
        raise ConfigError(f"routing.cooldown has value {cooldown!r}; expected seconds > 0")
    return Routing(strategy=cast(Strategy, strategy), cooldown=float(cooldown))


def _parse_stats(raw: object) -> StatsSettings:
    section = _mapping(raw, "stats")
    _refuse_unknown(section, {"path", "history", "latency_bound"}, "stats.")
    path = section.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise ConfigError(f"stats.path has value {path!r}; expected a file path")
    bound = section.get("latency_bound", StatsSettings.latency_bound)
    if isinstance(bound, bool) or not isinstance(bound, int | float) or bound <= 1:
        raise ConfigError(f"stats.latency_bound has value {bound!r}; expected a number > 1")
    return StatsSettings(
        path=path,
        history=_positive_int(section, "history", StatsSettings.history, "stats."),
        latency_bound=float(bound),
    )


def _is_nomyo(raw: Mapping[str, Any]) -> bool:
    eps = raw.get("endpoints")
    nomyo_only = {"llama_server_endpoints", "nomyo-router-api-key"} & raw.keys()
    string_list = isinstance(eps, list) and all(isinstance(e, str) for e in eps)
    return bool(nomyo_only) or (
        string_list and isinstance(raw.get("api_keys"), dict) and set(raw) <= _NOMYO_KEYS
    )


def _parse_nomyo(raw: Mapping[str, Any]) -> Settings:
    """nomyo-router's config.yaml: string endpoints, a map of box keys, one client key."""
    _refuse_unknown(raw, _NOMYO_KEYS, "")
    box_keys = _mapping(raw.get("api_keys") or {}, "api_keys")
    entries: list[object] = []
    for key, kind in (("endpoints", "ollama"), ("llama_server_endpoints", "llama-server")):
        for i, url in enumerate(_list(raw.get(key) or [], key)):
            if not isinstance(url, str):
                raise ConfigError(f"{key}[{i}] must be a URL string, got {_show(url)}")
            base, v1 = _without_v1(url)
            # nomyo tells an OpenAI-style box among its endpoints by the /v1.
            its_kind = "openai" if v1 and kind == "ollama" else kind
            entry = {"url": base, "kind": its_kind, "api_key": box_keys.get(url) or None}
            entries.append(entry)
    client_key = raw.get("nomyo-router-api-key")
    if client_key is not None and not isinstance(client_key, str):
        raise ConfigError(f"nomyo-router-api-key has value {_show(client_key)}; expected a string")
    return Settings(
        endpoints=_parse_endpoints(entries),
        max_concurrent_connections=_positive_int(raw, "max_concurrent_connections", 2, ""),
        client_keys=_parse_client_keys([client_key] if client_key else []),
    )


def _parse_endpoints(entries: list[object]) -> tuple[Endpoint, ...]:
    if not entries:
        raise ConfigError("endpoints must list at least one box")
    endpoints = tuple(_parse_endpoint(e, f"endpoints[{i}]") for i, e in enumerate(entries))
    seen: set[str] = set()
    for ep in endpoints:
        if ep.name in seen:
            raise ConfigError(f"endpoints: the name {ep.name!r} is used twice")
        seen.add(ep.name)
    return endpoints


def _parse_endpoint(entry: object, where: str) -> Endpoint:
    if isinstance(entry, str):
        entry = {"url": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a URL or a mapping, got {_show(entry)}")
    _refuse_unknown(entry, _ENDPOINT_KEYS, f"{where}.")
    raw_url = _require(entry, "url", str, f"{where}.")
    url = _url(raw_url, f"{where}.url")
    _refuse_api_path(raw_url, f"{where}.url")
    kind = entry.get("kind", "ollama")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind has value {kind!r}; expected one of {', '.join(KINDS)}")
    name = entry.get("name") or urlsplit(url).netloc
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name has value {name!r}; expected a string")
    max_concurrent = entry.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = _positive_int(entry, "max_concurrent", 1, f"{where}.")
    api_key = entry.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigError(f"{where}.api_key must be a string")
    priority = entry.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigError(f"{where}.priority has value {priority!r}; expected an integer")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
        raise ConfigError(f"{where}.weight has value {weight!r}; expected a number > 0")
    limits = {
        key: _positive_int(entry, key, 1, f"{where}.") if key in entry else None
        for key in ("rpm_limit", "tpm_limit")
    }
    return Endpoint(
        url=url,
        name=name,
        kind=cast(Kind, kind),
        max_concurrent=max_concurrent,
        api_key=api_key or None,
        priority=priority,
        weight=float(weight),
        **limits,
    )


def _url(value: str, where: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where} has value {value!r}; expected an http(s) URL like {DEFAULT_OLLAMA_URL}"
        )
    return value.rstrip("/")


_API_PATH = re.compile(r"(?:^|/)(?:v1|api)(?:/.*)?$")


def _refuse_api_path(url: str, where: str) -> None:
    """A box's URL is where its API paths start: ``/v1`` or ``/api`` on it would have
    every probe asked at ``/v1/v1/models`` or ``/api/api/tags`` and answered 404. (A
    reverse proxy's own prefix, like ``/ollama``, is fine.)"""
    parts = urlsplit(url)
    match = _API_PATH.search(parts.path)
    if match is None:
        return
    base = f"{parts.scheme}://{parts.netloc}{parts.path[: match.start()]}"
    raise ConfigError(
        f"{where} has path {parts.path!r}; ollamux adds the API paths itself: use {base}"
    )


def _without_v1(url: str) -> tuple[str, bool]:
    """nomyo-router's way to write an OpenAI-style box: its URL with ``/v1``."""
    stripped = url.rstrip("/")
    if stripped.endswith("/v1"):
        return stripped[: -len("/v1")], True
    return url, False


def _interpolate(value: object, where: str) -> object:
    if isinstance(value, str):

        def env(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{where or 'config'} refers to ${{{name}}}, which is not set")
            return os.environ[name]

        return _MARK.sub(env, _VAR.sub(env, value))
    if isinstance(value, list):
        return [_interpolate(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    return value


def _parse_section(raw: Mapping[str, Any], key: str, cls: type[T]) -> T:
    """A mapping of settings whose types are those of ``cls``'s defaults."""
    section = _mapping(raw.get(key, {}), key)
    defaults = cls()
    _refuse_unknown(section, set(cls.__dataclass_fields__), f"{key}.")  # type: ignore[attr-defined]
    values: dict[str, object] = {}
    for name, value in section.items():
        default = getattr(defaults, name)
        where = f"{key}.{name}"
        if isinstance(default, bool):
            values[name] = _bool(section, name, default, where)
        elif isinstance(default, int):
            values[name] = _positive_int(section, name, default, f"{key}.")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{where} has value {value!r}; expected a number > 0")
        else:
            values[name] = float(value)
    return cls(**values)


def _refuse_unknown(raw: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key {prefix}{key!s} (known: {', '.join(sorted(known))})")


def _require(raw: Mapping[str, Any], key: str, typ: type, prefix: str) -> Any:
    if key not in raw:
        raise ConfigError(f"{prefix}{key} is required")
    value = raw[key]
    if not isinstance(value, typ):
        raise ConfigError(f"{prefix}{key} has value {_show(value)}; expected a {typ.__name__}")
    return value


def _mapping(value: object, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key} has value {_show(value)}; expected a mapping")
    return value


def _list(value: object, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key} has value {_show(value)}; expected a list")
    return value


def _positive_int(raw: Mapping[str, Any], key: str, default: int, prefix: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{prefix}{key} has value {value!r}; expected a whole number >= 1")
    return value


def _bool(raw: Mapping[str, Any], key: str, default: bool, where: str = "") -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where or key} has value {value!r}; expected true or false")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
