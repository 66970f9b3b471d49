"""X-Forwarded-For/-Proto/-Host: tell the upstream who the downstream client really is, and let
no client tell it otherwise."""

from __future__ import annotations

from mitmproxy import http

from . import keys

# What a proxy says about the client; from a client, only claims. Kong without trusted_ips keeps
# none of them: X-Forwarded-Proto and -Host are set from the connection, the rest removed, and
# X-Forwarded-For is appended to (its last entry is the address the edge saw)
_SAID_BY_A_PROXY = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
                              b"x-forwarded-prefix", b"x-forwarded-path", b"x-real-ip",
                              b"forwarded"})


class Forwarded:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        # outbound, the app's own request is leaving: the downstream is the app, not a client hop
        if flow.response or st is None or st.direction == keys.OUTBOUND:
            return
        headers = flow.request.headers
        client_ip = flow.client_conn.peername[0].encode()
        # inbound, the downstream is a proxy of the mesh (the edge or a sidecar): what the edge said
        # about the client stays, as at an Envoy sidecar (use_remote_address false); at the edge the
        # downstream is the client itself, and nothing it says about itself does
        trusted = st.direction == keys.INBOUND
        kept, prior, removed = [], [], []
        proto = host = None
        for name, value in headers.fields:
            low = name.lower()
            if low == b"x-forwarded-for":
                prior.append(value)
                continue
            if low in _SAID_BY_A_PROXY:
                if not trusted:
                    removed.append(low)
                    continue
                if low == b"x-forwarded-proto":
                    proto = proto or value
                elif low == b"x-forwarded-host":
                    host = host or value
            kept.append((name, value))
        kept.append((b"x-forwarded-for", b", ".join([*prior, client_ip])))
        if proto is None:
            tls = flow.client_conn.tls_established
            kept.append((b"x-forwarded-proto", b"https" if tls else b"http"))
        if host is None:
            kept.append((b"x-forwarded-host",
                         (flow.request.host_header or "").encode("utf-8", "surrogateescape")))
        headers.fields = tuple(kept)
        for name in dict.fromkeys(removed):
            st.decide("forwarded", f"removed {name.decode()} sent by the client")
