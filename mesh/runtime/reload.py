"""Watches the config file and hands each valid change to a callback; bad edits change nothing."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

from mesh.config import ConfigError
from mesh.core.loops import Loop
from mesh.core.state import Snapshot

log = logging.getLogger("mitmesh.config")


def _stamp(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Watcher:
    """Polls (mtime, size, inode) every `interval`: portable, and cheap next to a request."""

    def __init__(self, path: str, build: Callable[[str], Snapshot], on_valid: Callable[[Snapshot], None],
                 on_invalid: Callable[[str], None], interval: float = 0.25):
        self.path = path
        self.build = build  # blocking, so it runs in a thread: the loop keeps serving meanwhile
        self.on_valid = on_valid
        self.on_invalid = on_invalid
        self.interval = interval
        self._seen = _stamp(path)
        self._loop = Loop("mitmesh-config-watch", self._run)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            stamp = _stamp(self.path)
            if stamp is None or stamp == self._seen:
                continue
            # an editor may still be writing: wait until the file holds still for one interval
            await asyncio.sleep(self.interval / 2)
            if _stamp(self.path) != stamp:
                continue
            self._seen = stamp
            await self.check_now()

    async def check_now(self) -> None:
        try:
            snap = await asyncio.to_thread(self.build, self.path)
        except ConfigError as e:
            self.on_invalid(str(e))
            return
        except Exception as e:  # a bug in compilation must not kill the watcher
            log.exception("config reload failed")
            self.on_invalid(f"{self.path}:1: internal error while loading: {e!r}")
            return
        self.on_valid(snap)
