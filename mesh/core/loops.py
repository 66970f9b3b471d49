"""Background loops of the proxy: started once the event loop runs, stopped (and awaited) at shutdown.

Every addon with a loop (metrics refresh, access log flush, certificate watch, JWKS refresh, …)
holds one `Loop` and calls `start()` in `running()` and `await stop()` in `done()`, instead of
writing the task bookkeeping out again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger("mitmesh")


class Loop:
    def __init__(self, name: str, body: Callable[[], Awaitable[None]]):
        self.name = name
        self.body = body
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the body as a task on the running loop (again after a stop; never twice)."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.body(), name=self.name)
            self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        """A body that ends by an exception stops its feature (no more reloads, refreshes,
        checks): said at once with its traceback, not when the task is garbage collected."""
        if not task.cancelled() and task.exception() is not None:
            log.error(f"background loop {self.name} stopped by an error; what it does is no "
                      f"longer done until the proxy restarts", exc_info=task.exception())

    async def stop(self, grace: float = 5.0) -> None:
        """Cancel the body and wait up to `grace` seconds for it to finish its cleanup."""
        task, self.task = self.task, None
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=grace)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()
