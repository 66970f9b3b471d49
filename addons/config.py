"""Loads mesh.yaml, keeps it live (hot reload), and pins the current snapshot to every new flow."""

from __future__ import annotations

import logging
import os

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode

from discovery.etcdwire import EtcdError
from mesh.config import ConfigError
from mesh.core.build import build, build_text
from mesh.core.state import Bound, MeshState, Snapshot
from mesh.core.workload import parse_workload
from mesh.runtime.reload import EtcdWatcher, Watcher, note_signature
from mesh.runtime.store import (Location, Revision, fetch_current, is_location, on_loopback,
                                proxy_location)
from mesh.telemetry import metrics

from . import keys, replies

log = logging.getLogger("mitmesh.config")


class Config:
    def __init__(self, state: MeshState, role: str = "gateway"):
        self.state = state
        self.role = role
        self.watcher: Watcher | EtcdWatcher | None = None
        self._listeners: dict[str, Bound] = {}
        self._etcd: tuple[Location, str, Revision] | None = None  # where, as whom, what it runs

    def load(self, loader):
        loader.add_option("mesh_config", str, "mesh.yaml",
                          "Mesh config file (YAML), or etcd://HOST:PORT[,HOST:PORT]/MESH for the revisions "
                          "`mitmesh config push` stores there (etcds://: mutual TLS, with this "
                          "proxy's workload certificate; only revisions the operator signed run, "
                          "see docs/howto/etcd.md). Changes are validated and applied live.")
        loader.add_option("mesh_proxy", str, os.environ.get("MITMESH_PROXY", ""),
                          "This proxy's name for a config rollout's canary (default: a sidecar's "
                          "instance name, the gateway's gateway.identity).")
        loader.add_option("mesh_reload", bool, True, "Watch mesh_config and reload it on change.")
        if self.role == "sidecar":
            loader.add_option(
                "mesh_workload", str, "",
                "The instance this sidecar stands beside: service=NAME,app=HOST:PORT"
                "[,version=v1,address=127.0.0.1,zone=Z,weight=1,instance=NAME,inbound=PORT,"
                "outbound=PORT,admin=PORT]. It binds its listeners and mDNS on `address`.",
            )

    def configure(self, updated):
        if self.role == "sidecar" and "mesh_workload" in updated:
            if not ctx.options.mesh_workload:
                if self.state.workload is not None:  # mitmproxy rolling back a rejected first
                    self.state.workload = None       # config: keep its error, not this one
                    return
                raise exceptions.OptionsError("a sidecar needs mesh_workload, e.g. "
                                              "service=catalog,app=127.0.0.1:9101")
            try:
                self.state.workload = parse_workload(ctx.options.mesh_workload)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
        if "mesh_config" in updated or (self.role == "sidecar" and "mesh_workload" in updated):
            if self.role == "sidecar" and self.state.workload is None:
                return  # nothing to serve until mesh_workload says which instance this is
            try:
                snap = self._first(ctx.options.mesh_config)
                self._install(snap)
            except (ConfigError, EtcdError, ValueError) as e:
                raise exceptions.OptionsError(str(e)) from None

    def _first(self, spec: str) -> Snapshot:
        """The config a starting proxy serves: the file, or the revision etcd selects for it."""
        self._etcd = None
        if not is_location(spec):
            return self._build(spec)
        # the certificate it presents to an etcds:// store: its workload's (the gateway's is read
        # before its config names gateway.identity: certs/workload/gateway.pem, or $MITMESH_ETCD_*)
        workload = self.state.workload.service if self.state.workload is not None else "gateway"
        location = proxy_location(spec, workload)
        if not location.secure and not on_loopback(location):
            log.warning(f"config store {location} is plain http beyond this host: anyone who "
                        f"reaches it can push a config to this proxy; use etcds:// "
                        f"(docs/howto/etcd.md)")
        proxy = self.proxy_name()
        rev = fetch_current(location, proxy)
        snap = self._build_text(rev.text, rev.label, rev.digest)
        note_signature(rev, location)
        self._etcd = (location, proxy, rev)
        self.state.config_store = (location.endpoints, location.tls)
        return snap

    def _describe(self) -> dict:
        snap = self.state.snapshot
        return {"role": self.role, "admin": f"http://{snap.admin[0]}:{snap.admin[1]}" if snap else None}

    def proxy_name(self) -> str:
        if ctx.options.mesh_proxy:
            return ctx.options.mesh_proxy
        if self.state.workload is not None:
            return self.state.workload.name
        return "gateway"

    def _build(self, path: str) -> Snapshot:
        return build(path, self.state.runtime, self.state.workload)

    def _build_text(self, text: str, label: str, digest: str | None = None) -> Snapshot:
        return build_text(text, label, digest, self.state.runtime, self.state.workload)

    def _install(self, snap: Snapshot) -> None:
        # what else the snapshot needs (user plugins' code) first: it may refuse the snapshot
        commits = [prepare(snap) for prepare in self.state.preparers]
        snap = self.state.install(snap)
        for commit in commits:
            commit()
        self._listeners = {b.mode: b for b in snap.listeners}
        first = snap.listeners[0].listener if snap.listeners else None
        wanted = {"mode": sorted(self._listeners), "connection_strategy": "lazy",
                  "keep_host_header": True,
                  # what mitmweb's status bar shows as the proxy's address: ours, not a default 8080
                  **({"listen_host": first.address, "listen_port": first.port} if first else {})}
        changed = {k: v for k, v in wanted.items() if k in ctx.options and getattr(ctx.options, k) != v}
        if changed:
            ctx.options.update(**changed)
        log.info(f"config {snap.file} version {snap.version} ({snap.digest}) in service: "
                 f"{len(snap.routes.routes)} routes, {len(snap.clusters)} clusters")

    async def running(self):
        # mitmdump loads scripts after it has bound its default listener; bind ours now.
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is not None:
            await proxyserver.servers.update([ProxyMode.parse(m) for m in ctx.options.mode])
        if ctx.options.mesh_reload and self._etcd is not None:
            self.watcher = EtcdWatcher(*self._etcd, self._build_text, self._reloaded, self._rejected,
                                       self._describe)
            self.state.control["config"] = self.watcher.status
            self.watcher.start()
        elif ctx.options.mesh_reload and self.state.snapshot:
            self.watcher = Watcher(self.state.snapshot.file, self._build, self._reloaded, self._rejected)
            self.watcher.start()

    async def done(self):
        if self.watcher:
            await self.watcher.stop()
        await self.state.pool.close()

    def _reloaded(self, snap: Snapshot) -> bool:
        """Install a valid new config; False (and the reason logged) when it cannot be."""
        if snap.tls.error:
            self._rejected(snap.tls.error)
            return False
        try:
            self._install(snap)
        except ConfigError as e:  # e.g. a plugin that fails to import
            self._rejected(str(e))
            return False
        except exceptions.OptionsError as e:  # e.g. a listener port that cannot be bound
            self._rejected(f"{snap.file}:1: gateway.listeners: {e}")
            return False
        self.state.reloads["ok"] += 1
        self.state.last_error = None
        metrics.CONFIG_RELOADS.labels("ok").inc()
        return True

    def _rejected(self, text: str) -> None:
        self.state.reloads["rejected"] += 1
        metrics.CONFIG_RELOADS.labels("rejected").inc()
        self.state.last_error = text
        log.error(f"config change rejected, still serving version {self.state.version}:\n{text}")

    def requestheaders(self, flow: http.HTTPFlow):
        snap = self.state.snapshot
        if snap is None:
            replies.reply(flow, 503, "no_config", "the proxy has no valid config loaded")
            return
        bound = self._listeners.get(flow.client_conn.proxy_mode.full_spec)
        if bound is None:
            keys.begin(flow, snap, None)
        else:
            keys.begin(flow, snap, bound.listener, bound.direction)
