"""Health: runs the active health checks of endpoints in the background (mesh/core/health.py)."""

from __future__ import annotations

from mesh.core.state import MeshState


class Health:
    def __init__(self, state: MeshState):
        self.state = state

    def running(self):
        # a new endpoint is out of rotation until its first check: checked as soon as it is known
        self.state.watchers.append(self.state.checker.wake)
        self.state.checker.start()

    async def done(self):
        if self.state.checker.wake in self.state.watchers:
            self.state.watchers.remove(self.state.checker.wake)
        await self.state.checker.stop()
