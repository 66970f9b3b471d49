"""Live state of one proxy process: the current config snapshot and the clusters it routes to."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from . import config as meshconfig
from . import mtls
from .cluster import Cluster, Endpoint
from .config.schema import MeshConfig
from .resilience import Guards, guards
from .routing import RouteTable, compile_routes
from .upstream import Pool


@dataclass(frozen=True)
class Snapshot:
    """One validated, compiled config. Never changed: a reload builds a new one and swaps it in."""

    config: MeshConfig
    file: str
    digest: str
    routes: RouteTable
    version: int = 0
    loaded_at: float = 0.0
    clusters: dict[str, Cluster] = field(default_factory=dict)


def build(path: str) -> Snapshot:
    """Read, validate and compile a config file. Pure and blocking: run it off the event loop."""
    with open(path, "rb") as f:
        raw = f.read()
    config = meshconfig.load_text(raw.decode("utf-8", "replace"), path)
    return Snapshot(
        config=config,
        file=path,
        digest=hashlib.sha256(raw).hexdigest()[:12],
        routes=compile_routes(config),
    )


class MeshState:
    """Shared by the addons of one proxy: they read `snapshot`; only `install` changes it."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.pool = Pool()
        self.certs = mtls.CertStore()  # watched TLS contexts, renewed from disk (addons/tls.py)
        self.upstream_tls: dict[str, mtls.UpstreamTls] = {}  # service → how to call it over mTLS
        self.version = 0
        self.reloads = {"ok": 0, "rejected": 0}
        self.last_error: str | None = None
        self.guards: dict[str, Guards] = {}  # cluster name → breakers, outliers, retry budget, faults
        self.on_breaker = None  # callback(cluster, endpoint, old, new): metrics, set by an addon
        # admin listener endpoints (path → handler(method, query) → (status, content type, body));
        # addons add theirs, the Admin addon serves them
        self.admin_handlers: dict = {}
        # event counters for /status (and metrics): ratelimit_storage_errors, mirror_diffs, ...
        self.counters: Counter[str] = Counter()
        self.mirror_diffs: deque[dict] = deque(maxlen=20)  # the latest mirror differences

    def install(self, snap: Snapshot) -> Snapshot:
        """Swap in a new snapshot; clusters that stay keep their live endpoint state."""
        old = self.snapshot.clusters if self.snapshot else {}
        clusters: dict[str, Cluster] = {}
        for name, svc in snap.config.services.items():
            for version, vcfg in svc.versions.items():
                cname = f"{name}/{version}"
                cluster = old.get(cname)
                if cluster is None or cluster.policy != svc.lb.policy:
                    cluster = Cluster(cname, name, version, svc.lb.policy, svc.connect_timeout,
                                      list(cluster.endpoints) if cluster else [])
                cluster.connect_timeout = svc.connect_timeout
                cluster.set_endpoints(
                    Endpoint(e.address, e.port, e.weight, e.zone) for e in vcfg.endpoints
                )
                clusters[cname] = cluster
                self.guards[cname] = guards(cname, svc, self.guards.get(cname), self._breaker_changed)
        self.version += 1
        snap = dataclasses.replace(snap, version=self.version, loaded_at=time.time(), clusters=clusters)
        self.snapshot = snap
        return snap

    def _breaker_changed(self, cluster: str, endpoint: str, old: str | None, new: str) -> None:
        if self.on_breaker is not None:
            self.on_breaker(cluster, endpoint, old, new)

    def status(self) -> dict:
        snap = self.snapshot
        if snap is None:
            return {"config": None}
        return {
            "config": {"file": snap.file, "version": snap.version, "digest": snap.digest,
                       "loaded_at": snap.loaded_at, "reloads": self.reloads,
                       "last_error": self.last_error},
            "routes": [
                {"name": r.name, "match": r.config.match.model_dump(exclude_defaults=True),
                 "action": _describe(r)}
                for r in snap.routes.routes
            ],
            "clusters": {name: {**c.status(), **self.guards[name].status()} if name in self.guards
                         else c.status() for name, c in snap.clusters.items()},
            "certificates": [{"files": list(w.paths), "renewals": w.renewals, "error": w.error}
                             for w in self.certs.items.values()],
            "counters": dict(self.counters),
            "mirror_diffs": list(self.mirror_diffs),
        }


def _describe(route) -> dict:
    rc = route.config
    if rc.forward is not None:
        return {"forward": rc.forward.model_dump(exclude_none=True)}
    if rc.direct is not None:
        return {"direct": {"status": rc.direct.status}}
    assert rc.redirect is not None
    return {"redirect": rc.redirect.model_dump()}
