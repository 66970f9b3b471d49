"""The admin listener of a proxy: /status (config, registry, routes, clusters), /flows and
/prometheus/targets (every proxy's admin listener, for Prometheus' http_sd_configs), /modules (the
Python modules this process has loaded, and its memory: what a proxy's config made it import), on
loopback.

Reading is open; mutating requests need the admin token (mesh/runtime/admin.py). /flows shows what
`mesh/security/redact.py` leaves of each flow: no credentials."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from mesh.runtime import admin, deferred, sockets
from mesh.security import redact
from mesh.runtime.admin import AdminServer, json_reply, prometheus_targets
from mesh.core.state import MeshState

log = logging.getLogger("mitmesh.admin")


class Admin:
    def __init__(self, state: MeshState, role: str = "gateway"):
        self.state = state
        self.role = role
        self.server: AdminServer | None = None
        self.handlers = state.admin_handlers
        self.handlers.update({"/status": self._status, "/healthz": self._healthz, "/flows": self._flows,
                              "/prometheus/targets": self._targets, "/modules": self._modules})

    def _status(self, method: str, query: str):
        return json_reply({"role": self.role, "pid": os.getpid(), **self.state.status()})

    def _flows(self, method: str, query: str):
        """The last flows this proxy answered (every worker's), newest last, with every decision made
        about them."""
        return json_reply({"role": self.role, "pid": os.getpid(),
                           "flows": redact.value(self.state.recent.latest())})

    def _modules(self, method: str, query: str):
        """What this process imported (a proxy imports only the features its config uses:
        docs/performance.md) and what it holds, from /proc/self/smaps_rollup; `deferred`: the
        modules imported but not run yet (mesh/runtime/deferred.py), not in `modules`."""
        waiting = deferred.pending()
        names = sorted(n for n, m in list(sys.modules.items()) if m is not None and n not in waiting)
        return json_reply({"role": self.role, "pid": os.getpid(), "count": len(names),
                           "memory_kb": memory_kb(), "modules": names, "deferred": waiting})

    def _targets(self, method: str, query: str):
        snap = self.state.snapshot
        if snap is None:
            return json_reply([])
        return json_reply(prometheus_targets(snap, self.state.registry.instances.values()))

    def _healthz(self, method: str, query: str):
        ok = self.state.snapshot is not None
        return json_reply({"ok": ok}, 200 if ok else 503)

    def _token(self) -> str | None:
        """The admin token, read from its file when a mutating request comes (a new file counts at once)."""
        snap = self.state.snapshot
        if snap is None:
            return None
        return admin.read_token(admin.token_path(snap.file, snap.config, sidecar=snap.workload is not None))

    def _wanted(self) -> tuple[str, int] | None:
        snap = self.state.snapshot
        if snap is None:
            return None
        return snap.admin

    async def running(self):
        await self._ensure()

    def configure(self, updated):
        if self.server is not None and self._wanted() != (self.server.address, self.server.port):
            asyncio.get_running_loop().create_task(self._ensure())

    async def _ensure(self):
        wanted = self._wanted()
        if wanted is None or (self.server and (self.server.address, self.server.port) == wanted):
            return
        if self.server:
            await self.server.stop()
        self.server = AdminServer(wanted[0], wanted[1], self.handlers,
                                  sock=sockets.inherited(*wanted), token=self._token)
        try:
            await self.server.start()
        except OSError as e:
            log.error(f"admin listener {wanted[0]}:{wanted[1]} cannot bind: {e.strerror}")
            self.server = None
            return
        log.info(f"admin listener on http://{wanted[0]}:{self.server.port}/status")

    async def done(self):
        if self.server:
            await self.server.stop()


def memory_kb() -> dict[str, int]:
    """This process's Rss, Pss and private memory in kB (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            fields = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f.readlines()[1:])}
    except (OSError, ValueError):
        return {}
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "private": fields["Private_Clean"] + fields["Private_Dirty"]}
