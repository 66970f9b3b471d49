"""Live state of one proxy process: the config snapshot, the registry of instances, the clusters."""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterator

from discovery import Event, Instance, Registry, StaticSource

from mesh.telemetry import metrics, records
from mesh.core import health, modes, own
from mesh.security import mtls, pki
from mesh.core.cluster import Cluster, Endpoint, HashKey
from mesh.resilience.settings import Guards, guards
from mesh.config.http import Http
from mesh.config.plugins import PluginPlan
from mesh.config.schema import HealthCheck, Listener, ListenerTls, MeshConfig, Service
from mesh.core.plan import Runtime, Uses
from mesh.core.routing import Route, RouteTable
from mesh.core.upstream import Pool
from mesh.core.workload import Workload

if TYPE_CHECKING:
    from discovery.etcdtls import EtcdTls

log = logging.getLogger("mitmesh.discovery")

INBOUND = "inbound"
OUTBOUND = "outbound"
LOCAL = "local"  # a sidecar's cluster holding its own app


@dataclass(frozen=True, slots=True)
class Bound:
    """A listener of this proxy: its mitmproxy mode, its config, the direction of its flows."""

    mode: str
    listener: Listener
    direction: str | None  # None on the gateway; INBOUND or OUTBOUND on a sidecar
    path: str  # where it is configured, for error messages: gateway.listeners[0], sidecar.inbound


def inbound_tls(config: MeshConfig, service: str) -> ListenerTls | None:
    """A sidecar's inbound TLS follows its service's `mtls` mode: STRICT or PERMISSIVE present the
    service's workload certificate and verify client certificates against the mesh CA (required or
    optional); DISABLE, or a service the config does not name, stays plaintext."""
    svc = config.services.get(service)
    if svc is None or svc.mtls == "DISABLE":
        return None
    cert, key = pki.workload_paths(PurePosixPath(config.mesh.identity.dir), service)
    return ListenerTls(cert=str(cert), key=str(key), mtls=svc.mtls)


def gateway_address() -> str | None:
    """This gateway's host address (`mitmesh gateway --address`): its listeners and admin bind
    there instead of the config's addresses, so one config serves gateways on many hosts."""
    return os.environ.get("MITMESH_ADDRESS") or None


def listeners_of(config: MeshConfig, workload: Workload | None) -> tuple[Bound, ...]:
    """The gateway's listeners, or a sidecar's inbound and outbound on its instance address."""
    if workload is None:
        host = gateway_address()
        listeners = [l.model_copy(update={"address": host}) if host else l for l in config.gateway.listeners]
        return tuple(Bound(modes.reverse(l.address, l.port), l, None, f"gateway.listeners[{i}]")
                     for i, l in enumerate(listeners))
    sc = config.sidecar
    tls = inbound_tls(config, workload.service)
    inbound = sc.inbound.model_copy(update={"address": workload.address, "tls": tls,
                                            "port": workload.inbound or sc.inbound.port})
    # captured: only the pod's own redirected connections reach the outbound, on its loopback
    transparent = workload.capture == "transparent"
    outbound = sc.outbound.model_copy(update={"address": "127.0.0.1" if transparent else workload.address,
                                              "port": workload.outbound or sc.outbound.port})
    where = f"services.{workload.service}.mtls" if tls else "sidecar.inbound"
    mode = modes.transparent if transparent else modes.regular
    return (Bound(modes.reverse(inbound.address, inbound.port), inbound, INBOUND, where),
            Bound(mode(outbound.address, outbound.port), outbound, OUTBOUND, "sidecar.outbound"))


def admin_of(config: MeshConfig, workload: Workload | None) -> tuple[str, int]:
    if workload is None:
        return (gateway_address() or config.gateway.admin.address, config.gateway.admin.port)
    return (workload.address, workload.admin or config.sidecar.admin.port)


@dataclass(frozen=True, slots=True)
class TlsPlan:
    """A snapshot's TLS, loaded by the build: listener contexts by (address, port), the names of
    mTLS listeners (log lines), how to call mTLS upstreams, and every watched context it uses."""

    contexts: dict = field(default_factory=dict)  # (address, port) → mtls.Watched[SSL.Context]
    names: dict = field(default_factory=dict)  # (address, port) → listener name, mTLS only
    upstreams: mtls.Upstreams = field(default_factory=mtls.Upstreams)
    watched: tuple = ()
    error: str = ""  # the workload certificate mTLS upstreams need cannot be loaded


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
    workload: Workload | None = None  # set on a sidecar
    listeners: tuple[Bound, ...] = ()
    admin: tuple[str, int] = ("127.0.0.1", 9901)
    zone: str | None = None  # this proxy's zone
    region: str | None = None  # this proxy's region (its workload's, or gateway.region)
    plugins: PluginPlan = PluginPlan()  # user plugins (their code is loaded by addons/plugins.py)
    functions: dict = field(default_factory=dict)  # function name → mesh.functions.spec.Spec
    sidecar_routes: dict[str, Route] = field(default_factory=dict)  # a sidecar's inbound and outbound routes
    uses: Uses = field(default_factory=Uses)  # JWKS caches and introspectors of this build (Runtime.keep)
    security_headers: tuple | None = None  # the gateway's default security headers, before routing
    tls: TlsPlan = field(default_factory=TlsPlan)
    ip_filters: dict = field(default_factory=dict)  # listener name → (allow, deny) networks
    claim_headers: frozenset[bytes] = frozenset()  # only the proxy sets them (folded): never from a client
    auth_failures: object = None  # ratelimit.Policy of gateway.auth_failures
    etcd_tls: EtcdTls | None = None  # what this proxy presents to discovery.etcd's members

    @property
    def role(self) -> str:
        return "gateway" if self.workload is None else "sidecar"

    @property
    def instance(self) -> str:
        """This proxy's name in access logs and service discovery: a sidecar's instance name, or
        the gateway's identity (`gateway.identity`)."""
        return self.workload.name if self.workload is not None else self.config.gateway.identity

    @property
    def http(self) -> Http:
        """How this proxy reads requests: `gateway.http`, or `sidecar.http` on a sidecar."""
        return self.config.gateway.http if self.workload is None else self.config.sidecar.http

    @property
    def engine(self) -> str:
        """Which HTTP/1.1 head parser this proxy's listeners use: `gateway.engine` or `sidecar.engine`."""
        return self.config.gateway.engine if self.workload is None else self.config.sidecar.engine


def static_instances(config: MeshConfig) -> list[Instance]:
    return [Instance(f"static:{name}/{version}/{e.address}:{e.port}", name, version, e.address, e.port,
                     e.weight, e.zone, e.region)
            for name, svc in config.services.items()
            for version, vcfg in svc.versions.items()
            for e in vcfg.endpoints]


_DEFAULT_SERVICE = Service(versions={"v1": {}})  # the settings of a service the config does not name
# a sidecar's own app: the service's breakers, outlier detection and faults act at its callers, per
# instance; here they would trip, eject or fault the one app a second time
_LOCAL_SERVICE = Service(versions={"v1": {}}, outlier_detection=None)


def _worker() -> str | None:
    """This worker's index under a supervisor (stable across restarts), for its files."""
    return os.environ.get("MITMESH_WORKER")


class MeshState:
    """Shared by the addons of one proxy: they read `snapshot`; only `install` changes it.

    Discovery sources feed `registry`; every change is turned into cluster memberships here, with
    one Endpoint object per address, shared by the clusters it belongs to (its version's cluster and
    its service's), so health and load are counted once.
    """

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.pool = Pool()
        self.runtime = Runtime()  # what outlives reloads: JWKS caches, introspectors, watched TLS files
        self.certs = self.runtime.certs  # watched TLS contexts, renewed from disk (addons/tls.py)
        self._checked: dict[Endpoint, Cluster] = {}  # endpoints health-checked, and their cluster
        self.version = 0
        self.reloads = {"ok": 0, "rejected": 0}
        self.last_error: str | None = None
        self.guards: dict[str, Guards] = {}  # cluster name → breakers, outliers, retry budget, faults
        self.on_breaker = None  # callback(cluster, endpoint, old, new): metrics, set by an addon
        # admin listener endpoints (path → handler(method, query) → (status, content type, body));
        # addons add theirs, the Admin addon serves them
        self.admin_handlers: dict = {}
        # the latest mirror differences and flows, of every worker (/status "counters" are metrics)
        self.mirror_diffs = records.Records("mirror-diffs", 20, 16384, metrics.shared_dir(), _worker(), "at")
        self.workload: Workload | None = None  # set before the first install on a sidecar
        self.region: str | None = None  # this proxy's region (its workload's, or gateway.region)
        self.registry = Registry()
        self.static = StaticSource()
        self.static.attach(self.registry)
        self.endpoints: dict[tuple[str, int], Endpoint] = {}
        self.local: Endpoint | None = None  # a sidecar's app
        self.announced: str | None = None  # the mDNS name this sidecar is announced as
        self.watchers: list[Callable[[], None]] = []  # told after membership or health changes
        # the control plane's view (etcd discovery, etcd config): name → status(), each with "stale"
        self.control: dict[str, Callable[[], dict]] = {}
        # the etcd members the config comes from (mesh_config=etcd[s]://...), as (client URLs, TLS
        # files or None): discovery uses them too unless discovery.etcd names others
        self.config_store: tuple[tuple[str, ...], EtcdTls | None] | None = None
        self.recent = records.Records("flows", 100, 8192, metrics.shared_dir(), _worker())  # /flows
        # told of every snapshot before it is installed (user plugins load their code here): each
        # returns what to run once it is installed, or raises ConfigError to refuse the snapshot
        self.preparers: list[Callable[[Snapshot], Callable[[], None]]] = []
        self.status_sections: dict[str, Callable[[], object]] = {}  # more of /status, by its key
        self._installing = False
        self.own = own.Own()  # what discovery must never make an endpoint (mesh/core/own.py)
        self.refused: dict[str, str] = {}  # discovered instance name → why it is no endpoint
        self.registry.subscribe(self._registry_changed)
        # active health checks: in the background while the Health addon runs it; the first checks
        # a request to a cluster without a checked endpoint waits for (Forward) run in any case
        self.checker = health.Checker(self.health_targets, self.refresh, tls_of=self.health_tls)

    def install(self, snap: Snapshot) -> Snapshot:
        """Swap in a new snapshot, built (mesh/core/build.py) for this proxy's workload; clusters that
        stay keep their live endpoint state."""
        config, workload, zone = snap.config, snap.workload, snap.zone
        self.region = region = snap.region
        old = self.snapshot.clusters if self.snapshot else {}
        clusters: dict[str, Cluster] = {}
        for name, svc in config.services.items():
            for version in svc.versions:
                clusters[f"{name}/{version}"] = _cluster(old.get(f"{name}/{version}"), f"{name}/{version}",
                                                         name, version, svc, zone, region)
            clusters[name] = _cluster(old.get(name), name, name, "*", svc, zone, region)
        for cname, cluster in old.items():  # discovered services the config does not name
            if cname not in clusters and cname != LOCAL and cluster.endpoints:
                clusters[cname] = cluster
        if workload is not None:
            svc = config.services.get(workload.service) or Service(versions={workload.version: {}})
            if self.local is None or self.local.key != workload.app:
                self.local = Endpoint(*workload.app, source=LOCAL, instance=workload.name,
                                      healthy=False, detail="not checked yet")
            local = _cluster(old.get(LOCAL), LOCAL, workload.service, workload.version, svc, None)
            local.set_endpoints([self.local])
            clusters[LOCAL] = local
        # a sidecar's connections leave from its instance's address, as from its own host
        self.pool.local_address = workload.address if workload else None
        for cname, cluster in clusters.items():
            svc = (_LOCAL_SERVICE if cname == LOCAL
                   else config.services.get(cluster.service) or _DEFAULT_SERVICE)
            self.guards[cname] = guards(cname, svc, self.guards.get(cname), self._breaker_changed)
        self.version += 1
        snap = dataclasses.replace(snap, version=self.version, loaded_at=time.time(), clusters=clusters)
        self.snapshot = snap
        self.own = own_of(snap, self.config_store)
        self.runtime.keep(snap.uses)
        self.certs.retain(list(snap.tls.watched))
        self._installing = True
        try:
            self.static.replace(static_instances(config))
        finally:
            self._installing = False
        self._sync()
        return snap

    def upstream_tls(self, cluster: Cluster, endpoint: Endpoint) -> tuple[ssl.SSLContext, str] | None:
        """(client context, required peer SPIFFE ID) to reach one endpoint over mTLS, or None for
        plaintext; a sidecar's own app is always plaintext. Raises mtls.NoMtls when mTLS is needed
        but impossible (no workload certificate, an endpoint announcing a foreign identity)."""
        if cluster.name == LOCAL:
            return None
        return self.upstreams.plan(cluster.service, endpoint.protocol, endpoint.identity)

    @property
    def upstreams(self) -> mtls.Upstreams:
        """Which endpoints are called over mTLS, and with what: the live snapshot's."""
        return self.snapshot.tls.upstreams if self.snapshot is not None else mtls.Upstreams()

    def guards_for(self, cluster: Cluster) -> Guards:
        """The cluster's breakers, outlier detector, retry budget and faults (a cluster discovered
        after the last install gets the defaults of a service the config does not name)."""
        found = self.guards.get(cluster.name)
        if found is None:
            svc = self.snapshot.config.services.get(cluster.service) if self.snapshot else None
            found = self.guards[cluster.name] = guards(cluster.name, svc or _DEFAULT_SERVICE, None,
                                                       self._breaker_changed)
        return found

    def _breaker_changed(self, cluster: str, endpoint: str, old: str | None, new: str) -> None:
        if self.on_breaker is not None:
            self.on_breaker(cluster, endpoint, old, new)

    def _registry_changed(self, event: Event) -> None:
        if not self._installing:
            self._sync()

    def _sync(self) -> None:
        """Registry → cluster memberships (keeping each endpoint's live state)."""
        snap = self.snapshot
        if snap is None:
            return
        members: dict[str, dict[tuple[str, int], Endpoint]] = {}
        refused: dict[str, str] = {}
        for inst in self.registry.instances.values():
            why = None if inst.source == "static" else self.own.refusal(inst.service, *inst.key)
            if why is not None:
                refused[inst.name] = why
                continue
            ep = self.endpoints.get(inst.key)
            if ep is None:
                ep = self.endpoints[inst.key] = Endpoint(inst.address, inst.port)
                # whatever its source: a new endpoint of a service with active health checks (every
                # service: they are on by default) is chosen once its first check passed; one that
                # is known already (same address) keeps its state across announcements and reloads
                svc = snap.config.services.get(inst.service) or _DEFAULT_SERVICE
                if svc.health_check is not None:
                    health.await_first_check(ep)
            ep.weight, ep.zone, ep.identity, ep.region = inst.weight, inst.zone, inst.identity, inst.region
            ep.source, ep.protocol, ep.instance = inst.source, inst.protocol, inst.name
            members.setdefault(inst.cluster, {})[inst.key] = ep
            members.setdefault(inst.service, {})[inst.key] = ep
        new = {cname: _cluster(None, cname, cname.partition("/")[0], cname.partition("/")[2] or "*",
                               Service(versions={"v1": {}}), snap.zone, snap.region)
               for cname in members if cname not in snap.clusters}
        if new:  # a discovered service or version the config does not name: a new snapshot, same version
            snap = self.snapshot = dataclasses.replace(snap, clusters={**snap.clusters, **new})
        for cname, cluster in snap.clusters.items():
            if cname != LOCAL:
                cluster.set_endpoints(list(members.get(cname, {}).values()))
        self._refuse(refused)
        live = {key for eps in members.values() for key in eps}
        for key in [k for k in self.endpoints if k not in live]:
            del self.endpoints[key]
            self.pool.forget(*key)
        self._notify()

    def _refuse(self, refused: dict[str, str]) -> None:
        """Log and count each refused instance once (not on every browse that finds it again)."""
        for name, why in refused.items():
            if self.refused.get(name) != why:
                inst = self.registry.instances[name]
                log.warning(f"discovery: instance {name} ({inst.cluster} at {inst.address}:{inst.port}, "
                            f"from {inst.source}) is no endpoint: {why}")
                metrics.DISCOVERY_REFUSED.labels(inst.source).inc()
        self.refused = refused

    def refresh(self) -> None:
        """After health changed: recompute every cluster's candidates and tell the watchers."""
        if self.snapshot is not None:
            for cluster in self.snapshot.clusters.values():
                cluster.refresh()
        self._notify()

    def _notify(self) -> None:
        for watcher in list(self.watchers):
            watcher()

    def health_targets(self) -> Iterator[tuple[Endpoint, HealthCheck]]:
        """What the active health checker probes: this sidecar's app, the endpoints of every
        cluster this proxy has sent to (a sidecar that never calls a service checks it no more),
        and every endpoint awaiting its first check, once, wherever it is (it is chosen by nobody
        until it passed, and an unchecked one must not look like a cluster with none healthy)."""
        snap = self.snapshot
        if snap is None:
            return
        seen: dict[Endpoint, Cluster] = {}
        for cluster in snap.clusters.values():
            every = cluster.used or cluster.name == LOCAL
            for ep in cluster.endpoints:
                if (every or ep.pending) and ep not in seen:
                    seen[ep] = cluster
                    yield ep, cluster.health_check
        self._checked = seen

    def health_tls(self, ep: Endpoint) -> tuple[ssl.SSLContext, str] | None:
        """How an HTTP health check reaches `ep`: over mTLS exactly when requests to it do."""
        cluster = self._checked.get(ep)
        if cluster is None and self.snapshot is not None:  # a first check before the targets' pass
            cluster = next((c for c in self.snapshot.clusters.values() if ep in c.endpoints), None)
        return self.upstream_tls(cluster, ep) if cluster is not None else None

    def control_status(self) -> dict:
        """Each control-plane part's status, and `stale`: some part serves what it last knew."""
        parts = {name: fn() for name, fn in self.control.items()}
        return {"stale": any(p.get("stale") for p in parts.values()), **parts}

    def status(self) -> dict:
        snap = self.snapshot
        if snap is None:
            return {"config": None}
        endpoints = self.endpoints
        instances = []
        for entry in self.registry.status():
            inst = self.registry.instances[entry["name"]]
            ep = endpoints.get(inst.key)
            entry["healthy"] = ep.healthy if ep else None
            entry["pending"] = ep.pending if ep else False  # awaiting its first health check
            entry["detail"] = ep.detail if ep else self.refused.get(inst.name, "")
            instances.append(entry)
        out = {
            "config": {"file": snap.file, "version": snap.version, "digest": snap.digest,
                       "loaded_at": snap.loaded_at, "reloads": self.reloads,
                       "last_error": self.last_error},
            "mesh": snap.config.mesh.id,
            "zone": snap.zone,
            "region": self.region,
            "listeners": [{"name": b.listener.name, "address": f"{b.listener.address}:{b.listener.port}",
                           "direction": b.direction, "tls": b.listener.tls is not None,
                           "mtls": b.listener.tls.mtls if b.listener.tls else None}
                          for b in snap.listeners],
            "registry": {"instances": instances},
            "control_plane": self.control_status(),
            "upstream": {"connections_opened": self.pool.opened, "idle": self.pool.idle_count()},
            "routes": [
                {"name": r.name, "match": r.config.match.model_dump(exclude_defaults=True),
                 "action": _describe(r)}
                for r in snap.routes.routes
            ],
            "clusters": {name: {**c.status(), **self.guards[name].status()} if name in self.guards
                         else c.status() for name, c in snap.clusters.items()},
            "certificates": [{"files": list(w.paths), "renewals": w.renewals, "error": w.error}
                             for w in self.certs.items.values()],
            # these two of every worker of a supervised proxy, whichever answers; the rest is its own
            "counters": metrics.totals(),
            "mirror_diffs": self.mirror_diffs.latest(),
            **{key: section() for key, section in self.status_sections.items()},
        }
        if snap.workload is not None:
            w, local = snap.workload, self.local
            out["workload"] = {"service": w.service, "version": w.version, "instance": w.name,
                               "zone": w.zone, "region": w.region, "weight": w.weight, "identity": w.identity(snap.config),
                               "app": f"{w.app[0]}:{w.app[1]}", "announced": self.announced,
                               "app_healthy": local.healthy if local else None,
                               "app_detail": local.detail if local else ""}
        return out


def own_of(snap: Snapshot, config_store: tuple[tuple[str, ...], EtcdTls | None] | None) -> own.Own:
    """What this proxy serves (listeners, admin) and its control plane's etcd client URLs."""
    etcd = snap.config.discovery.etcd
    scheme = "https" if etcd is not None and etcd.tls is not None else "http"
    urls = tuple(f"{scheme}://{m.address}:{m.port}" for m in etcd.endpoints) if etcd else ()
    listeners = [(b.listener.address, b.listener.port, f"{b.direction or 'gateway'} listener "
                  f"{b.listener.name!r}") for b in snap.listeners]
    inbound = next((l for b, l in zip(snap.listeners, listeners) if b.direction == INBOUND), None)
    store = config_store[0] if config_store is not None else ()
    return own.own([l for l in listeners if l is not inbound], snap.admin, urls + store,
                   inbound, snap.workload.service if snap.workload else None)


def _cluster(old: Cluster | None, name: str, service: str, version: str, svc: Service,
             zone: str | None, region: str | None = None) -> Cluster:
    """The cluster with this service's balancing settings, reusing `old` (and its live state)."""
    lb = svc.lb
    hash_on = None
    if lb.hash_on is not None:
        h = lb.hash_on
        hash_on = (HashKey("header", h.header.lower()) if h.header is not None
                   else HashKey("cookie", h.cookie) if h.cookie is not None else HashKey("source_ip"))
    cluster = old
    settings = (lb.policy, hash_on, lb.points_per_weight)
    if cluster is None or (cluster.policy, cluster.hash_on, cluster.points_per_weight) != settings:
        cluster = Cluster(name, service, version, lb.policy, svc.connect_timeout,
                          list(old.endpoints) if old else [], hash_on=hash_on,
                          points_per_weight=lb.points_per_weight, used=old.used if old else False)
    cluster.connect_timeout = svc.connect_timeout
    cluster.idle_timeout = svc.idle_timeout
    cluster.zone_aware = lb.zone_aware.min_healthy if lb.zone_aware is not None else None
    cluster.local_zone = zone
    cluster.local_region = region
    cluster.locality = lb.locality.overprovisioning if lb.locality is not None else None
    cluster.health_check = svc.health_check
    cluster.refresh()
    return cluster


def _describe(route) -> dict:
    rc = route.config
    if rc.forward is not None:
        return {"forward": rc.forward.model_dump(exclude_none=True)}
    if rc.direct is not None:
        return {"direct": {"status": rc.direct.status}}
    if rc.function is not None:
        return {"function": rc.function}
    assert rc.redirect is not None
    return {"redirect": rc.redirect.model_dump()}
