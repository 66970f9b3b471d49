"""Mdns: keeps the registry live over mDNS and announces this sidecar while its app is healthy.

Static endpoints reach the registry with the config (MeshState.install); this addon runs the mDNS
source on explicit addresses only: a sidecar's own instance address, the gateway's configured ones.
"""

from __future__ import annotations

import contextlib
import asyncio
import logging

from mitmproxy import ctx

from discovery import Instance
from discovery.mdns import MdnsSource
from mesh.core import health, podnet
from mesh.core.state import MeshState, Snapshot

log = logging.getLogger("mitmesh.discovery")


def mdns_settings(snap: Snapshot) -> tuple[str, tuple[str, ...]] | None:
    """(mesh id, interface addresses), or None when mDNS is off."""
    mdns = snap.config.discovery.mdns
    if mdns is None:
        return None
    interfaces = (snap.workload.address,) if snap.workload else podnet.mdns_interfaces(tuple(mdns.interfaces))
    return snap.config.mesh.id, interfaces


def local_instance(snap: Snapshot) -> Instance:
    """What a sidecar announces: its inbound listener, and who stands behind it."""
    w = snap.workload
    inbound = next(b.listener for b in snap.listeners if b.direction == "inbound")
    return Instance(name=w.name, service=w.service, version=w.version, address=inbound.address,
                    port=inbound.port, weight=w.weight, zone=w.zone, identity=w.identity(snap.config),
                    region=w.region, protocol="https" if inbound.tls else "http", source="mdns",
                    workload=w.name,
                    admin=snap.admin[1])


class Mdns:
    """Runs one discovery source that also announces; addons/etcd.py is the same with etcd."""

    label = ""  # what its log lines start with

    def __init__(self, state: MeshState):
        self.state = state
        self.source: MdnsSource | None = None
        self.announced: str | None = None  # the name this sidecar is announced as
        self.settings: tuple | None = None
        self.stopping = False
        self._busy: asyncio.Lock | None = None
        self._announced: Instance | None = None

    def load(self, loader):
        loader.add_option("mesh_announce", bool, True,
                          "Announce this sidecar's instance over mDNS (only one worker of a sidecar does).")

    async def running(self):
        self._busy = asyncio.Lock()
        await self._restart()
        self.state.watchers.append(self._changed)
        snap, local = self.state.snapshot, self.state.local
        if snap is not None and local is not None and snap.workload is not None:
            # check the app at once, so a ready instance is announced without waiting for the checker
            hc = snap.clusters["local"].health_check
            ok, detail = await health.probe(local, hc)
            if health.record(local, ok, detail, hc):
                self.state.refresh()
        await self._reconcile()

    def settings_of(self, snap: Snapshot) -> tuple | None:
        return mdns_settings(snap)

    async def start_source(self, settings: tuple):
        mesh, interfaces = settings
        source = MdnsSource(mesh, list(interfaces))
        # in a pod's mesh: the sockets are made inside the mesh's namespace
        with podnet.entered() if podnet.inside(interfaces[0]) else contextlib.nullcontext():
            source.open()
        await source.start(self.state.registry)
        log.info(f"mDNS discovery of mesh {mesh!r} on {', '.join(interfaces)}")
        return source

    def _set_announced(self, name: str | None) -> None:
        self.announced = self.state.announced = name

    async def _restart(self) -> None:
        async with self._busy:
            snap = self.state.snapshot
            wanted = self.settings_of(snap) if snap else None
            if wanted == self.settings and (self.source is not None or wanted is None):
                return
            if self.source is not None:
                await self.source.stop()
                self.source = None
                self._set_announced(None)
            self.settings = wanted
            if wanted is not None:
                self.source = await self.start_source(wanted)
        await self._reconcile()

    def _changed(self) -> None:
        """After any change of config, membership or health: follow the mDNS settings (a reload
        may change them) and the app's readiness."""
        if self.stopping:
            return
        snap, local = self.state.snapshot, self.state.local
        if snap is not None and self.settings_of(snap) != self.settings:
            asyncio.get_running_loop().create_task(self._restart())
        elif local is not None and (local.healthy != (self.announced is not None)
                                    or (self._announced and local_instance(snap) != self._announced)):
            asyncio.get_running_loop().create_task(self._reconcile())

    async def _reconcile(self) -> None:
        """Announced exactly while the app is healthy (readiness), and never while stopping."""
        snap, local = self.state.snapshot, self.state.local
        if self._busy is None or snap is None or snap.workload is None or local is None:
            return
        async with self._busy:
            if self.source is None:
                return
            want = local.healthy and not self.stopping and ctx.options.mesh_announce
            inst = local_instance(snap)
            if want and self.announced is not None and inst != self._announced:
                await self.source.withdraw()  # a reload changed what it announces (port, TLS, ...)
                self._set_announced(None)
            if want and self.announced is None:
                self._set_announced(await self.source.announce(inst, inst.name))
                self._announced = inst
                log.info(f"{self.label}announced {inst.name} ({inst.cluster}, zone "
                         f"{inst.zone or '-'}, weight {inst.weight}) at {inst.address}:{inst.port} "
                         f"as {self.announced}")
            elif not want and self.announced is not None:
                await self.source.withdraw()
                log.info(f"{self.label}withdrawn {snap.workload.name} (goodbye sent): "
                         f"{'stopping' if self.stopping else local.detail or 'not announcing'}")
                self._set_announced(None)

    async def withdraw(self) -> None:
        """Graceful stop, first step: say goodbye so callers stop sending here within a second."""
        self.stopping = True
        await self._reconcile()

    async def done(self):
        self.stopping = True
        if self._changed in self.state.watchers:
            self.state.watchers.remove(self._changed)
        if self._busy is not None:
            await self._reconcile()
            async with self._busy:
                if self.source is not None:
                    await self.source.stop()
                    self.source = None
