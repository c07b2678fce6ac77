"""Config hot reload: on SIGHUP and when the config file changes.

A new file that cannot be served is refused: the error is logged and the running config
stays. A good one is applied without dropping a request (``Services.reconfigure``).
The file's directory is watched (editors often replace a file rather than write it), and
only changes to the file itself count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import watchfiles

from ollamux.routing.api.services import Services
from ollamux.routing.settings import ConfigError, load_settings

log = logging.getLogger("ollamux.reload")


class Reloader:
    def __init__(self, path: str | Path, services: Services) -> None:
        self.path = Path(path).resolve()
        self._services = services
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sighup = False
        self.reloads = 0  # applied
        self.refused = 0

    def reload(self) -> bool:
        try:
            settings = load_settings(self.path)
        except ConfigError as exc:
            self.refused += 1
            log.error("config %s refused, the running config stays: %s", self.path, exc)
            return False
        except Exception:  # whatever the file holds, the watcher must outlive it
            self.refused += 1
            log.exception("config %s refused, the running config stays", self.path)
            return False
        changes = self._services.reconfigure(settings)
        self.reloads += 1
        log.info(
            "config %s reloaded: added %s, removed %s, changed %s",
            self.path,
            changes["added"] or "none",
            changes["removed"] or "none",
            changes["changed"] or "none",
        )
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())
        loop = asyncio.get_running_loop()
        # Only the main thread may own signals (tests serve apps from other threads).
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            self._sighup = True

    async def stop(self) -> None:
        self._stop.set()
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            await self._task

    async def _watch(self) -> None:
        async for changes in watchfiles.awatch(
            self.path.parent, stop_event=self._stop, debounce=200, recursive=False
        ):
            if any(Path(p).name == self.path.name for _change, p in changes):
                self.reload()
