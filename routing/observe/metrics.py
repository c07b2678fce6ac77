"""``GET /metrics`` in Prometheus' text format, from one ``CollectorRegistry`` per app.

Per request only counters and histograms move (a few label lookups and additions).
Everything that describes the fleet now (in flight, waiting, slots, health, breakers,
loaded models) is read from the status snapshot when Prometheus scrapes, by
``FleetCollector``: a new snapshot field is one more family there, and costs nothing
between scrapes. prometheus_client's global default registry is never used, so two apps
in one process keep separate figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ollamux.backends.relay import Outcome
from ollamux.routing.accounting import Counts
from ollamux.routing.observe.status import EndpointStatus, Snapshot
from ollamux.routing.state import Fleet, Health

_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_HEALTH = ("healthy", "degraded", "down", "unknown")


class Metrics:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "ollamux_requests",
            "Requests relayed to a box, by box, model, route and final status",
            ["box", "model", "route", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "ollamux_time_to_first_token_seconds",
            "From a slot being reserved to the box's first byte (Ollama: its first token)",
            ["box", "model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "ollamux_request_duration_seconds",
            "From a slot being reserved to the last byte relayed",
            ["box", "model"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "ollamux_tokens",
            "Tokens the boxes reported in final chunks, by kind (prompt or output)",
            ["box", "model", "kind"],
            registry=r,
        )
        self.fleet = FleetCollector(snapshot)
        r.register(self.fleet)
        self._fleet: Fleet | None = None

    def finished(self, outcome: Outcome, counts: Counts) -> None:
        box, model = outcome.box or "", outcome.model
        self.requests.labels(box, model, outcome.path, status_label(outcome)).inc()
        if outcome.first_byte is not None:
            self.ttft.labels(box, model).observe(outcome.first_byte - outcome.started)
        if outcome.ended is not None:
            self.duration.labels(box, model).observe(outcome.ended - outcome.started)
        if counts.prompt_tokens:
            self.tokens.labels(box, model, "prompt").inc(counts.prompt_tokens)
        if counts.output_tokens:
            self.tokens.labels(box, model, "output").inc(counts.output_tokens)

    def fleet_changed(self, fleet: Fleet) -> None:
        """Count what the prober saw happen: probes starting to fail, models loading."""
        before, self._fleet = self._fleet, fleet
        collector = self.fleet
        for box in fleet.boxes:
            old = before.by_name.get(box.name) if before is not None else None
            if box.error is not None and (old is None or box.error != old.error):
                collector.box_failures[box.name] = collector.box_failures.get(box.name, 0) + 1
            if old is None or old.health is Health.UNKNOWN:
                continue  # what a box has loaded when first seen was not seen loading
            for model in box.loaded - old.loaded:
                key = (box.name, model)
                collector.model_loads[key] = collector.model_loads.get(key, 0) + 1

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format the scraper's Accept header asks for: OpenMetrics,
        or Prometheus' classic text format (0.0.4) by default."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


def status_label(outcome: Outcome) -> str:
    if outcome.status:
        return str(outcome.status)
    return "client_gone" if outcome.client_gone else "error"


class FleetCollector(Collector):
    """Families read from the status snapshot at scrape time, plus two counters of what
    the prober saw happen (kept here because they are only ever read at scrape time)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot
        self.box_failures: dict[str, int] = {}
        self.model_loads: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        endpoints = snap["endpoints"]
        yield from _slots(endpoints)
        yield from _health(endpoints)
        yield from _breakers(endpoints)
        queue = snap.get("queue", {})
        waiting = GaugeMetricFamily("ollamux_waiting", "Requests in the waiting room now")
        waiting.add_metric([], float(queue.get("waiting", 0)))
        yield waiting
        if "oldest_wait" in queue:
            oldest = GaugeMetricFamily(
                "ollamux_waiting_oldest_seconds", "How long the oldest waiting request has waited"
            )
            oldest.add_metric([], float(queue.get("oldest_wait") or 0))
            yield oldest
        yield from _replicas(snap)
        totals = snap.get("totals", {})
        in_flight = GaugeMetricFamily("ollamux_in_flight", "Requests holding a slot now")
        in_flight.add_metric([], float(totals.get("in_flight", 0)))
        yield in_flight
        failures = CounterMetricFamily(
            "ollamux_box_failures",
            "Times a box's probes started failing (or failed differently)",
            labels=["box"],
        )
        for box, n in sorted(self.box_failures.items()):
            failures.add_metric([box], n)
        yield failures
        loads = CounterMetricFamily(
            "ollamux_model_loads",
            "Models seen newly loaded on a box by the prober",
            labels=["box", "model"],
        )
        for (box, model), n in sorted(self.model_loads.items()):
            loads.add_metric([box, model], n)
        yield loads


def _slots(endpoints: list[EndpointStatus]) -> Iterable[Metric]:
    in_use = GaugeMetricFamily(
        "ollamux_slots_in_use", "Slots in use per box and model", labels=["box", "model"]
    )
    slots = GaugeMetricFamily("ollamux_slots", "Slots per box and model", labels=["box", "model"])
    loaded = GaugeMetricFamily(
        "ollamux_model_loaded", "1 if the model is loaded on the box", labels=["box", "model"]
    )
    for ep in endpoints:
        for m in ep.get("models", []):
            labels = [ep["name"], m["name"]]
            in_use.add_metric(labels, m.get("in_use", 0))
            slots.add_metric(labels, m.get("max", 0))
            loaded.add_metric(labels, 1.0 if m.get("loaded") else 0.0)
    return (in_use, slots, loaded)


def _replicas(snap: Snapshot) -> Iterable[Metric]:
    """Replicas sharing the fleet (shared_state): slot and waiting figures above are
    then fleet-wide; these say who holds them and whether Redis answers."""
    shared = snap.get("shared_state")
    if shared is None or shared.get("backend") == "memory":
        return ()
    healthy = GaugeMetricFamily(
        "ollamux_shared_state_healthy",
        "1 while the shared state (Redis) answers; 0: this replica serves on its share",
    )
    healthy.add_metric([], 1.0 if shared.get("healthy") else 0.0)
    leases = GaugeMetricFamily(
        "ollamux_replica_leases", "Slots each replica holds now", labels=["replica"]
    )
    seen = GaugeMetricFamily(
        "ollamux_replica_last_seen_seconds",
        "Seconds since each replica's last heartbeat",
        labels=["replica"],
    )
    for replica in snap.get("replicas", []):
        leases.add_metric([replica["name"]], float(replica.get("leases", 0)))
        seen.add_metric([replica["name"]], float(replica.get("last_seen") or 0.0))
    return (healthy, leases, seen)


def _health(endpoints: list[EndpointStatus]) -> Iterable[Metric]:
    health = GaugeMetricFamily(
        "ollamux_box_health", "1 for the box's current health state", labels=["box", "state"]
    )
    for ep in endpoints:
        for state in _HEALTH:
            health.add_metric([ep["name"], state], 1.0 if ep.get("health") == state else 0.0)
    return (health,)


def _breakers(endpoints: list[EndpointStatus]) -> Iterable[Metric]:
    """Per-box circuit breaker state, when the snapshot carries one (a string, or an
    object with a ``state``)."""
    breaker = GaugeMetricFamily(
        "ollamux_breaker_state", "1 for the box's circuit breaker state", labels=["box", "state"]
    )
    seen = False
    for ep in endpoints:
        value = ep.get("breaker")
        state = value.get("state") if isinstance(value, Mapping) else value
        if isinstance(state, str):
            seen = True
            breaker.add_metric([ep["name"], state], 1.0)
    return (breaker,) if seen else ()


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.services.metrics
    body, content_type = metrics.render(request.headers.get("accept", ""))
    return Response(body, headers={"content-type": content_type})
