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

from mitmproxy import connection, exceptions, http, tls
from OpenSSL import SSL

from mesh.core.loops import Loop
from mesh.telemetry import metrics
from mesh.security import mtls, pki
from mesh.core.state import MeshState

from . import keys, replies

log = logging.getLogger("mitmesh.tls")


class Tls:
    """The listeners of the snapshot (the gateway's, or a sidecar's inbound and outbound) with
    their TLS and mTLS contexts, loaded by the build (mesh/core/build.tls_plan): a certificate that
    cannot be used rejects the config, so a hook only looks contexts up."""

    def __init__(self, state: MeshState):
        self.state = state
        self._refuse = SSL.Context(SSL.TLS_SERVER_METHOD)  # no certificate: every handshake fails
        self._peers: dict[str, str | None] = {}  # client connection id → verified SPIFFE ID
        self._loop = Loop("mitmesh-cert-watch", self._watch)

    def configure(self, updated):
        snap = self.state.snapshot
        if snap is not None and snap.tls.error:  # at start: a proxy that cannot reach its mTLS upstreams
            raise exceptions.OptionsError(snap.tls.error)

    async def running(self):
        self._loop.start()

    async def done(self):
        await self._loop.stop()

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
        mode = data.context.client.proxy_mode
        snap = self.state.snapshot
        watched = snap.tls.contexts.get((mode.listen_host(), mode.listen_port())) if snap else None
        data.ssl_conn = mtls.AlertingConnection(watched.context if watched else self._refuse)
        data.ssl_conn.set_accept_state()

    def tls_established_client(self, data: tls.TlsData) -> None:
        cert = data.ssl_conn.get_peer_certificate() if data.ssl_conn else None
        if cert is not None:  # OpenSSL verified it against the listener's client CA
            self._peers[data.conn.id] = pki.spiffe_of(cert.to_cryptography())

    def tls_failed_client(self, data: tls.TlsData) -> None:
        mode = data.context.client.proxy_mode
        snap = self.state.snapshot
        listener = snap.tls.names.get((mode.listen_host(), mode.listen_port())) if snap else None
        metrics.TLS_HANDSHAKE_FAILURES.labels(listener or f"{mode.listen_host()}:{mode.listen_port()}").inc()
        if listener is not None:  # mitmproxy's own line assumes an interception proxy
            conn = data.ssl_conn if isinstance(data.ssl_conn, mtls.AlertingConnection) else None
            why = (conn.refused or (conn.failed and _reason(repr(conn.failed)))) if conn else None
            log.info(f"mTLS handshake refused on listener {listener}: {why or _reason(data.conn.error or '')} "
                     f"(client {data.conn.peername[0]})")

    def client_disconnected(self, client: connection.Client) -> None:
        self._peers.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow):
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
            flow.metadata[keys.PEER] = peer
            st.decide("tls", f"mTLS peer {peer}")


def _reason(error: str) -> str:
    """The OpenSSL reason inside mitmproxy's handshake error text."""
    if "Certificate verify failed: " in error:
        return error.rsplit("Certificate verify failed: ", 1)[1].rstrip(")")
    if "', '" in error:
        return error.rsplit("', '", 1)[1].split("'")[0]
    return error
