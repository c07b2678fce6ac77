"""Config hot reload: on SIGHUP, on ``POST /router/reload`` and when the config file
changes.

A new file that cannot be served is refused: the error is logged (and answered to
``/router/reload``) and the running config stays. A good one is applied without dropping
a request (``Services.reconfigure``). The file's directory is watched (editors often
replace a file rather than write it), but only the file itself is seen: the log or the
stats file next to it must not wake the watcher, or each log line would be a change that
writes a log line.
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

    def reload(self) -> dict[str, list[str]]:
        """Read the file again and apply it: what changed, by box name. Raises
        ConfigError (the running config stays) when it cannot be served."""
        try:
            settings = load_settings(self.path)
        except (ConfigError, UnicodeDecodeError) as exc:
            self.refused += 1
            error = exc if isinstance(exc, ConfigError) else _not_utf8(self.path, exc)
            log.error("config %s refused, the running config stays: %s", self.path, error)
            raise error from None
        changes = self._services.reconfigure(settings)
        self.reloads += 1
        log.info(
            "config %s reloaded: added %s, removed %s, changed %s",
            self.path,
            changes["added"] or "none",
            changes["removed"] or "none",
            changes["changed"] or "none",
        )
        return changes

    def _reload_quietly(self) -> None:
        """The watcher's and SIGHUP's reload: a refusal is logged, never raised."""
        with contextlib.suppress(ConfigError):
            self.reload()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())
        loop = asyncio.get_running_loop()
        # Only the main thread may own signals (tests serve apps from other threads).
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self._reload_quietly)
            self._sighup = True

    async def stop(self) -> None:
        self._stop.set()
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            await self._task

    async def _watch(self) -> None:
        # watchfiles logs each batch of changes at INFO and filtered-out ones at DEBUG:
        # either way a log file in this folder would feed it. It stays quiet; the
        # reloads it causes are logged here.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        name = self.path.name
        async for _changes in watchfiles.awatch(
            self.path.parent,
            stop_event=self._stop,
            debounce=200,
            recursive=False,
            watch_filter=lambda _change, p: Path(p).name == name,
        ):
            self._reload_quietly()


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> ConfigError:
    return ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})")
