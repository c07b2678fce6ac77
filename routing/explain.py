"""Explained decisions: why a request went where it went, and what else was considered.

``route_reason`` is the short form carried by each lease (the ``X-Ollamux-Route``
response header, the dashboard's recent requests, debug logs). ``explain`` is the long
form behind ``GET /router/explain?model=NAME``: what would be chosen right now and why,
every box with its standing, and nothing sent anywhere.
"""

from __future__ import annotations

import re
from typing import Any

from ollamux.routing.choose import Candidate, NoRoute, Request, Tier, no_route, rank
from ollamux.routing.policies import Signals
from ollamux.routing.state import BoxState, Fleet, Usage


def predicted_ttft(reason: str) -> float | None:
    """The time to first token ``route_reason`` says was predicted for the request when it
    arrived (for one placed at once: the chosen box's estimate), None if it has none."""
    arrival = re.search(r"on arrival est ttft ([0-9.]+) s", reason)
    placed = arrival or re.search(r"est ttft ([0-9.]+) s", reason)
    return float(placed.group(1)) if placed else None


TIERS = {Tier.LOADED_FREE: "loaded, free slot", Tier.FREE: "free slot", Tier.SATURATED: "saturated"}


def route_reason(
    ranked: list[Candidate],
    strategy: str,
    waited: float | None = None,
    predicted: float | None = None,
) -> str:
    """``predicted``: a request that waited was estimated, on arrival, to see its first
    token this many seconds later (the estimate on the chosen box is made at placement)."""
    chosen = ranked[0]
    reason = f"{chosen.describe()} ({TIERS[chosen.tier]}; {strategy})"
    if waited is not None:
        reason += f"; waited {waited:.2f} s"
    if predicted is not None:
        reason += f"; on arrival est ttft {predicted:.2f} s"
    if len(ranked) > 1:
        reason += f"; next {ranked[1].describe()}"
    return reason


def explain(
    fleet: Fleet, usage: Usage, req: Request, signals: Signals, queueing: bool
) -> dict[str, Any]:
    # No randomness: equal boxes are reported as a tie rather than guessed between.
    ranked = rank(fleet, usage, req, lambda: 0.5, signals)
    placed = {c.box.name: i for i, c in enumerate(ranked)}
    boxes = []
    for box in fleet.boxes:
        entry: dict[str, Any] = {"box": box.name}
        if box.name in placed:
            c = ranked[placed[box.name]]
            entry |= {
                "rank": placed[box.name] + 1,
                "tier": TIERS[c.tier],
                "loaded": c.loaded,
                "in_use": c.in_use,
                "max": box.slots,
                "utilisation": round(signals.utilisation.get(box.name, 0.0), 3),
                "expected_s": round(signals.expected(box.name, req.model), 3),
                "describe": c.describe(),
            }
            if c.estimate is not None:
                entry["estimate"] = c.estimate.as_dict()
                entry["learned"] = signals.learned.describe(box.name, req.model)
            if c.note:
                entry["not_free"] = c.note
        else:
            entry["excluded"] = _why_not(box, req, signals)
        boxes.append(entry)
    boxes.sort(key=lambda e: e.get("rank", len(boxes) + 1))
    result: dict[str, Any] = {"model": req.model, "strategy": req.strategy, "boxes": boxes}
    if not ranked:
        reason = no_route(fleet, req)
        result |= {"chosen": None, "reason": _no_route_text(reason)}
        return result
    best = ranked[0]
    waits = queueing and best.tier is Tier.SATURATED
    result |= {
        "chosen": None if waits else best.box.name,
        "would_wait": waits,
        "reason": "no free slot anywhere: it would wait in the waiting room"
        if waits
        else route_reason(ranked, req.strategy),
        "tie": [c.box.name for c in ranked if _tied(c, best)] if len(ranked) > 1 else [],
    }
    if len(result["tie"]) < 2:
        result["tie"] = []
    return result


def _tied(c: Candidate, best: Candidate) -> bool:
    return c.tier == best.tier and c.loaded == best.loaded and c.load == best.load


def _why_not(box: BoxState, req: Request, signals: Signals) -> str:
    if req.model not in box.models:
        return "does not have the model"
    if not box.routable:
        return (
            f"breaker {box.breaker}"
            if box.health.value in ("healthy", "degraded")
            else str(box.health)
        )
    if box.name in req.exclude:
        return "failed this request"
    if req.kinds is not None and box.kind not in req.kinds:
        return f"a {box.kind} box cannot serve this route"
    if box.name in signals.cooling:
        return "resting after a 429"
    if signals.utilisation.get(box.name, 0.0) >= 1.0:
        return "at its rate limit"
    return "not a candidate"


def _no_route_text(reason: NoRoute) -> str:
    if reason is NoRoute.UNKNOWN_MODEL:
        return "no box has this model"
    return "no box that may have this model can serve now"
