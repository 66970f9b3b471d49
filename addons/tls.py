"""TLS toward downstream clients: each HTTPS listener presents its configured certificate.

Contexts are built once per config; a listener without TLS refuses a TLS handshake instead of
letting mitmproxy mint a certificate from its interception CA.
"""

from __future__ import annotations

import os

from mitmproxy import ctx, exceptions, http, tls
from OpenSSL import SSL

from mesh.state import Snapshot

from . import keys, replies


def _select_alpn(http2: bool):
    def select(conn: SSL.Connection, offered: list[bytes]):
        if http2 and b"h2" in offered:
            return b"h2"
        if b"http/1.1" in offered:
            return b"http/1.1"
        return SSL.NO_OVERLAPPING_PROTOCOLS
    return select


def server_context(cert: str, key: str, http2: bool) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.use_certificate_chain_file(cert)
    context.use_privatekey_file(key)
    context.check_privatekey()
    context.set_alpn_select_callback(_select_alpn(http2))
    return context


def _refusing_context() -> SSL.Context:
    return SSL.Context(SSL.TLS_SERVER_METHOD)  # no certificate: every handshake fails


class Tls:
    def __init__(self, state):
        self.state = state
        self._contexts: dict[tuple[str, int], SSL.Context] = {}
        self._refuse = _refusing_context()
        self._built_for: Snapshot | None = None

    def configure(self, updated):
        self._build()

    def _build(self) -> None:
        snap = self.state.snapshot
        if snap is None or snap is self._built_for:
            return
        base = os.path.dirname(os.path.abspath(snap.file))
        contexts = {}
        for bound in snap.listeners:
            lst = bound.listener
            if lst.tls is None:
                continue
            cert, key = (os.path.join(base, p) for p in (lst.tls.cert, lst.tls.key))
            try:
                contexts[(lst.address, lst.port)] = server_context(cert, key, lst.tls.http2)
            except (OSError, SSL.Error) as e:
                raise exceptions.OptionsError(
                    f"{snap.file}:1: {bound.path}.tls: cannot use certificate "
                    f"{lst.tls.cert} with key {lst.tls.key}: {e} (got {cert!r})"
                ) from None
        self._contexts = contexts
        self._built_for = snap

    def tls_start_client(self, data: tls.TlsData) -> None:
        if data.ssl_conn is not None:
            return
        if self._built_for is not self.state.snapshot:
            try:
                self._build()
            except exceptions.OptionsError as e:
                ctx.log.error(str(e))
        mode = data.context.client.proxy_mode
        context = self._contexts.get((mode.listen_host(), mode.listen_port()), self._refuse)
        data.ssl_conn = SSL.Connection(context)
        data.ssl_conn.set_accept_state()

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if flow.response or st is None or st.listener is None:
            return
        if st.listener.tls is not None and not flow.client_conn.tls_established:
            replies.reply(flow, 400, "tls_required",
                          f"listener {st.listener.name} only speaks HTTPS; use https://")
