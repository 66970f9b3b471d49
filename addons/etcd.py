"""Etcd: keeps the registry live from etcd and registers this sidecar under a lease while its app
is healthy (the same readiness rules as mDNS, in addons/mdns.py; only the source differs)."""

from __future__ import annotations

import asyncio
import logging

from typing import TYPE_CHECKING

from mesh.config.schema import Etcd as EtcdModel
from mesh.core.state import Snapshot

from .mdns import Mdns

if TYPE_CHECKING:
    from discovery.etcd import EtcdSource
    from discovery.etcdtls import EtcdTls

log = logging.getLogger("mitmesh.discovery")
DEFAULT_TTL = EtcdModel.model_fields["ttl"].default


def etcd_settings(snap: Snapshot,
                  store: tuple[tuple[str, ...], EtcdTls | None] | None = None) -> tuple | None:
    """(mesh id, etcd client URLs, lease TTL, TLS files or None), or None when etcd discovery is
    off. A proxy whose config comes from etcd (`store`) discovers through the same members, with
    the same certificate, unless discovery.etcd names others."""
    etcd = snap.config.discovery.etcd
    if etcd is not None:
        scheme = "https" if snap.etcd_tls is not None else "http"
        urls = tuple(f"{scheme}://{m.address}:{m.port}" for m in etcd.endpoints)
        return snap.config.mesh.id, urls, etcd.ttl, snap.etcd_tls
    if store:
        return snap.config.mesh.id, store[0], DEFAULT_TTL, store[1]
    return None


class Etcd(Mdns):
    label = "etcd: "
    def load(self, loader):
        pass  # mesh_announce is Mdns's option, and governs both

    async def running(self):
        # Mdns, before it in the chain, has already checked the app once at start
        self._busy = asyncio.Lock()
        self.state.watchers.append(self._changed)
        await self._restart()

    def settings_of(self, snap: Snapshot) -> tuple | None:
        return etcd_settings(snap, self.state.config_store)

    async def start_source(self, settings: tuple) -> EtcdSource:
        from discovery.etcd import EtcdSource  # only where the config uses etcd
        from discovery.etcdapi import Etcd as EtcdClient

        mesh, endpoints, ttl, tls = settings
        source = EtcdSource(EtcdClient(list(endpoints), tls=tls), mesh, ttl)
        await source.start(self.state.registry)
        self.state.control["discovery"] = source.status
        log.info(f"etcd discovery of mesh {mesh!r} through {', '.join(endpoints)} (lease TTL {ttl}s)")
        return source

    def _set_announced(self, name: str | None) -> None:
        self.announced = name

    async def done(self):
        await super().done()
        self.state.control.pop("discovery", None)
