"""Health: runs the active health checks of endpoints in the background (mesh/core/health.py)."""

from __future__ import annotations

from mesh.core.health import Checker
from mesh.core.state import MeshState


class Health:
    def __init__(self, state: MeshState):
        self.state = state
        self.checker: Checker | None = None

    def running(self):
        self.checker = Checker(self.state.health_targets, self.state.refresh, tls_of=self.state.health_tls)
        self.checker.start()

    async def done(self):
        if self.checker is not None:
            await self.checker.stop()
