"""A simulated box that also counts the requests it receives, per path.

The probe-traffic benchmark needs to know how often ollamux asks a box for ``/api/ps``,
``/api/tags`` and ``/api/version``; the simulated box does not count those, so this
wraps each of its routes with a counter and adds ``GET /bench/counts``.

    python bench/_countbox.py --port P --name gpu-a --models llama3.2 --num-parallel 64
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ollamux.backends.sim.ollama import SimBox, SimConfig


class CountingBox(SimBox):
    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.counts: Counter[str] = Counter()

    def _routes(self) -> list[web.AbstractRouteDef]:
        routes: list[web.AbstractRouteDef] = []
        for route in super()._routes():
            assert isinstance(route, web.RouteDef)
            routes.append(web.route(route.method, route.path, self._counted(route)))
        routes.append(web.get("/bench/counts", self._counts))
        return routes

    def _counted(self, route: web.RouteDef) -> Any:
        handler, path = route.handler, route.path

        async def counted(request: web.Request) -> web.StreamResponse:
            self.counts[path] += 1
            return await handler(request)

        return counted

    async def _counts(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.counts))


async def serve(config: SimConfig, port: int) -> None:
    box = CountingBox(config)
    await box.start("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await box.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="gpu-a")
    parser.add_argument("--models", default="llama3.2")
    parser.add_argument("--preload", default="llama3.2")
    parser.add_argument("--num-parallel", type=int, default=64)
    args = parser.parse_args()
    config = SimConfig(
        name=args.name,
        models=args.models.split(","),
        preloaded=args.preload.split(","),
        num_parallel=args.num_parallel,
    )
    uvloop.run(serve(config, args.port))


if __name__ == "__main__":
    main()
