"""Etcd: keeps the registry live from etcd and registers this sidecar under a lease while its app
is healthy (the same readiness rules as mDNS, in addons/mdns.py; only the source differs)."""

from __future__ import annotations

import asyncio
import logging

from typing import TYPE_CHECKING

from discovery.etcdwire import EtcdError
from mesh.config.schema import Etcd as EtcdModel
from mesh.core.loops import Loop
from mesh.core.state import Snapshot

from .mdns import Mdns

if TYPE_CHECKING:
    from discovery.etcd import EtcdSource
    from discovery.etcdtls import EtcdTls

log = logging.getLogger("mitmesh.discovery")
DEFAULT_TTL = EtcdModel.model_fields["ttl"].default
RESIGN_INTERVAL = 60.0  # seconds between checks whether the certificate that signs changed


def etcd_settings(snap: Snapshot,
                  store: tuple[tuple[str, ...], EtcdTls | None] | None = None) -> tuple | None:
    """(mesh id, etcd client URLs, lease TTL, TLS files or None, (trust domain, namespace)), or
    None when etcd discovery is off. A proxy whose config comes from etcd (`store`) discovers
    through the same members, with the same certificate, unless discovery.etcd names others."""
    etcd, ids = snap.config.discovery.etcd, snap.config.mesh
    names = (ids.trust_domain, ids.namespace)  # whose SPIFFE IDs sign instances (with TLS)
    if etcd is not None:
        scheme = "https" if snap.etcd_tls is not None else "http"
        urls = tuple(f"{scheme}://{m.address}:{m.port}" for m in etcd.endpoints)
        return snap.config.mesh.id, urls, etcd.ttl, snap.etcd_tls, names
    if store:
        return snap.config.mesh.id, store[0], DEFAULT_TTL, store[1], names
    return None


class Etcd(Mdns):
    label = "etcd: "

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resign = Loop("mitmesh-etcd-resign", self._resign_loop)

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

        mesh, endpoints, ttl, tls, (trust_domain, namespace) = settings
        sign = verify = None
        if tls is not None:  # every mesh certificate may write: instances carry their own proof
            from mesh.security.instances import InstanceSigner, verifier

            sign = InstanceSigner(mesh, tls.cert, tls.key)
            verify = verifier(mesh, tls.ca, trust_domain, namespace)
        source = EtcdSource(EtcdClient(list(endpoints), tls=tls), mesh, ttl, sign=sign,
                            verify=verify)
        await source.start(self.state.registry)
        self.state.control["discovery"] = source.status
        if sign is not None:
            self._resign.start()
        log.info(f"etcd discovery of mesh {mesh!r} through {', '.join(endpoints)} (lease TTL {ttl}s)")
        return source

    async def _resign_loop(self) -> None:
        """A renewed workload certificate signs the announced record again before the old one
        expires (Istio's are 24 h); a record whose certificate expired is refused by proxies."""
        while True:
            await asyncio.sleep(RESIGN_INTERVAL)
            source = self.source
            if source is None:
                continue
            try:
                await source.refresh()
            except (ValueError, EtcdError) as e:
                log.warning(f"etcd: cannot sign this instance's record again: {e}")

    def _set_announced(self, name: str | None) -> None:
        self.announced = name

    async def done(self):
        await self._resign.stop()
        await super().done()
        self.state.control.pop("discovery", None)
