"""TLS of the proxy: listener certificates and mTLS toward downstream clients, the workload
certificate presented to mTLS upstreams, and renewed certificate files picked up without a restart.

Contexts are built once per config from watched files (mesh/security/mtls.py); a listener without TLS
refuses a TLS handshake instead of letting mitmproxy mint a certificate from its interception CA.
Client certificates are verified by OpenSSL itself (VERIFY_PEER, and FAIL_IF_NO_PEER_CERT in
STRICT mode): mitmproxy's own `request_client_cert` accepts any certificate, so it is not used.
A peer's SPIFFE ID outside `mesh.trust_domain` fails the handshake, and a failed handshake sends
its alert (`mtls.AlertingConnection`). No CA key is ever loaded here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

from mitmproxy import connection, ctx, exceptions, http, tls
from OpenSSL import SSL

from mesh.telemetry import metrics
from mesh.security import mtls, pki
from mesh.config.schema import Listener
from mesh.core.state import MeshState, Snapshot

from . import keys, replies

log = logging.getLogger("mitmesh.tls")


def identity_of(snap: Snapshot) -> str:
    """Whose workload certificate this proxy presents upstream: a sidecar its service's, the
    gateway `gateway.identity`."""
    return snap.workload.service if snap.workload is not None else snap.config.gateway.identity


class Tls:
    """The listeners of the snapshot (the gateway's, or a sidecar's inbound and outbound) with
    their TLS and mTLS contexts, and the client contexts for mTLS upstreams."""

    def __init__(self, state: MeshState, identity: Callable[[Snapshot], str] = identity_of):
        self.state = state
        self.identity = identity
        self._contexts: dict[tuple[str, int], mtls.Watched[SSL.Context]] = {}
        self._refuse = SSL.Context(SSL.TLS_SERVER_METHOD)  # no certificate: every handshake fails
        self._built_for: Snapshot | None = None
        self._names: dict[tuple[str, int], str] = {}  # mTLS listeners, for log lines
        self._peers: dict[str, str | None] = {}  # client connection id → verified SPIFFE ID
        self._task: asyncio.Task | None = None

    def configure(self, updated):
        self._build()

    def _build(self) -> None:
        snap = self.state.snapshot
        if snap is None or snap is self._built_for:
            return
        base = os.path.dirname(os.path.abspath(snap.file))
        config = snap.config
        me = self.identity(snap)
        mesh_ca = mtls.workload_files(base, config.mesh.identity.dir, me)[2]
        store = self.state.certs
        contexts = {}
        listeners = [bound.listener for bound in snap.listeners]
        for bound in snap.listeners:
            lst = bound.listener
            if lst.tls is None:
                continue
            t = lst.tls
            cert, key = (os.path.join(base, p) for p in (t.cert, t.key))
            client_ca = (os.path.join(base, t.client_ca) if t.client_ca else mesh_ca) if t.mtls else None
            ca_keys = os.path.realpath(os.path.join(base, config.mesh.identity.dir, pki.CA_DIR))
            if os.path.commonpath([os.path.realpath(key), ca_keys]) == ca_keys:
                raise exceptions.OptionsError(
                    f"{snap.file}:1: {bound.path}.tls.key: a CA's private key is never given to a "
                    f"proxy (it could mint any identity); use the listener's own key (got {t.key!r})")
            try:  # peers' SPIFFE IDs must lie in the trust domain; with the mesh CA they need one
                contexts[(lst.address, lst.port)] = store.server(
                    cert, key, http2=t.http2, client_ca=client_ca, mode=t.mtls,
                    trust_domain=config.mesh.trust_domain, need_spiffe=not t.client_ca)
            except (OSError, SSL.Error, ValueError) as e:
                raise exceptions.OptionsError(_unusable(snap, bound, client_ca, e)) from None
        wanted = frozenset(name for name, svc in config.services.items() if svc.mtls != "DISABLE")
        cert, key, ca = mtls.workload_files(base, config.mesh.identity.dir, me)
        client, missing = None, ""
        try:  # also without mTLS services: endpoints that discovery announces as https need it
            client = store.client(cert, key, ca)
        except (OSError, ValueError) as e:
            if wanted:
                raise exceptions.OptionsError(
                    f"{snap.file}:1: {'gateway.identity' if snap.workload is None else 'sidecar'}: "
                    f"cannot load the workload certificate of "
                    f"{me} for mTLS upstreams ({', '.join(sorted(wanted))}): {e}; `mitmesh certs issue "
                    f"{me}` makes one (got {me!r})") from None
            missing = f"cannot load the workload certificate of {me} ({e}); `mitmesh certs issue {me}` makes one"
        store.retain(list(contexts.values()) + ([client] if client else []))
        self._contexts = contexts
        self._names = {(l.address, l.port): l.name for l in listeners if l.tls and l.tls.mtls}
        self.state.upstreams = mtls.Upstreams(wanted, client, config.mesh.trust_domain,
                                              config.mesh.namespace, missing)
        self._built_for = snap

    def _ensure(self) -> None:
        if self._built_for is not self.state.snapshot:
            try:
                self._build()
            except exceptions.OptionsError as e:
                ctx.log.error(str(e))
                self._built_for = self.state.snapshot  # reported once; keep the last good contexts

    async def running(self):
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="mitmesh-cert-watch")

    async def done(self):
        if self._task:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        """Swap in renewed certificate files: new handshakes use them, open connections go on."""
        while True:
            snap = self.state.snapshot
            await asyncio.sleep(snap.config.mesh.identity.reload_interval if snap else 1.0)
            for w in self.state.certs.refresh():
                log.info(f"certificate {w.paths[0]} renewed: new handshakes use it")
            for w in self.state.certs.items.values():
                if w.error:
                    log.debug(f"certificate {w.paths[0]} not reloaded yet: {w.error}")

    def tls_start_client(self, data: tls.TlsData) -> None:
        if data.ssl_conn is not None:
            return
        self._ensure()
        mode = data.context.client.proxy_mode
        watched = self._contexts.get((mode.listen_host(), mode.listen_port()))
        data.ssl_conn = mtls.AlertingConnection(watched.context if watched else self._refuse)
        data.ssl_conn.set_accept_state()

    def tls_established_client(self, data: tls.TlsData) -> None:
        cert = data.ssl_conn.get_peer_certificate() if data.ssl_conn else None
        if cert is not None:  # OpenSSL verified it against the listener's client CA
            self._peers[data.conn.id] = pki.spiffe_of(cert.to_cryptography())

    def tls_failed_client(self, data: tls.TlsData) -> None:
        mode = data.context.client.proxy_mode
        listener = self._names.get((mode.listen_host(), mode.listen_port()))
        metrics.TLS_HANDSHAKE_FAILURES.labels(listener or f"{mode.listen_host()}:{mode.listen_port()}").inc()
        if listener is not None:  # mitmproxy's own line assumes an interception proxy
            conn = data.ssl_conn if isinstance(data.ssl_conn, mtls.AlertingConnection) else None
            why = (conn.refused or (conn.failed and _reason(repr(conn.failed)))) if conn else None
            log.info(f"mTLS handshake refused on listener {listener}: {why or _reason(data.conn.error or '')} "
                     f"(client {data.conn.peername[0]})")

    def client_disconnected(self, client: connection.Client) -> None:
        self._peers.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow):
        self._ensure()  # after a reload: listener contexts and how Forward calls mTLS services
        st = keys.get(flow)
        if flow.response or st is None or st.listener is None:
            return
        listener_tls = st.listener.tls
        if listener_tls is None:
            return
        if not flow.client_conn.tls_established:
            if listener_tls.mtls == "STRICT":
                st.decide("tls", "plaintext refused: listener is mTLS STRICT")
                replies.reply(flow, 400, "mtls_required",
                              f"listener {st.listener.name} only accepts mutual TLS; "
                              "connect with https:// and a mesh client certificate")
            elif listener_tls.mtls is None:
                replies.reply(flow, 400, "tls_required",
                              f"listener {st.listener.name} only speaks HTTPS; use https://")
            return
        peer = self._peers.get(flow.client_conn.id)
        if peer is not None:
            st.peer = peer
            if st.principal is None:
                st.principal = peer
            flow.metadata[keys.PEER] = peer
            st.decide("tls", f"mTLS peer {peer}")


def _unusable(snap: Snapshot, bound, client_ca: str | None, e: Exception) -> str:
    """The config error of a listener whose certificate files cannot be used."""
    t = bound.listener.tls
    base = os.path.dirname(os.path.abspath(snap.file))
    missing = [p for p in (t.cert, t.key) if not os.path.exists(os.path.join(base, p))]
    if missing:  # OpenSSL's own words for a missing file are a list of empty tuples
        e = f"no such file: {', '.join(missing)}"
    if bound.path.startswith("services."):  # a sidecar's inbound, from its service's mtls mode
        service = snap.workload.service
        return (f"{snap.file}:1: {bound.path}: {t.mtls} needs the workload certificate of {service}: "
                f"cannot use {t.cert} with key {t.key}: {e}; `mitmesh certs issue {service}` makes one "
                f"(got {t.mtls!r})")
    what = f"client CA {client_ca}, " if client_ca else ""
    return (f"{snap.file}:1: {bound.path}.tls: cannot use {what}certificate {t.cert} with key {t.key}: "
            f"{e} (got {os.path.join(os.path.dirname(os.path.abspath(snap.file)), t.cert)!r})")


def _reason(error: str) -> str:
    """The OpenSSL reason inside mitmproxy's handshake error text."""
    if "Certificate verify failed: " in error:
        return error.rsplit("Certificate verify failed: ", 1)[1].rstrip(")")
    if "', '" in error:
        return error.rsplit("', '", 1)[1].split("'")[0]
    return error
