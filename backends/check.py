"""``ollamux check``: probe every box of a config once and tell what it found.

The probes are the prober's own (one ``refresh_all`` of a ``Prober`` that never starts
its loops), so a box counts as reachable here exactly when the running proxy would route
to it: it answers its probes as a box of its kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from ollamux.backends.kinds import adapters
from ollamux.backends.prober import Prober
from ollamux.backends.upstream import Upstream
from ollamux.routing.settings import Settings
from ollamux.routing.state import BoxState, Health, canonical_model

HEADER = ("box", "kind", "reachable", "version", "models", "loaded")


@dataclass(frozen=True, slots=True)
class Report:
    boxes: tuple[BoxState, ...]

    @property
    def ok(self) -> bool:
        """Something is wrong unless every box answers every probe."""
        return all(b.health is Health.HEALTHY for b in self.boxes)

    def table(self) -> str:
        rows = [HEADER, *(_row(b) for b in self.boxes)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        problems = [f"{b.name}: {b.error}" for b in self.boxes if b.error]
        text = "\n".join(line.rstrip() for line in lines)
        return text + ("\n\n" + "\n".join(problems) if problems else "")


async def check(settings: Settings) -> Report:
    aliases = {canonical_model(own): name for own, name in settings.aliases}
    upstream = Upstream(settings.timeouts)
    await upstream.open()
    try:
        prober = Prober(settings, upstream, adapters(aliases))
        await prober.refresh_all()
        return Report(prober.fleet.boxes)
    finally:
        await upstream.close()


def _row(box: BoxState) -> tuple[str, ...]:
    reachable = {Health.HEALTHY: "yes", Health.DEGRADED: "degraded"}.get(box.health, "no")
    loaded = ",".join(sorted(box.loaded)) or "-"
    return (box.name, box.kind, reachable, box.version or "-", str(len(box.models)), loaded)
