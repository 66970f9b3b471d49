"""X-Forwarded-For/-Proto/-Host: tell the upstream who the downstream client really is."""

from __future__ import annotations

from mitmproxy import http

from . import keys


class Forwarded:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        # outbound, the app's own request is leaving: the downstream is the app, not a client hop
        if flow.response or st is None or st.direction == keys.OUTBOUND:
            return
        headers = flow.request.headers
        client_ip = flow.client_conn.peername[0]
        prior = headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{prior}, {client_ip}" if prior else client_ip
        # inbound, the edge's X-Forwarded-Proto (what the client really used) stays
        if st.direction is None or "x-forwarded-proto" not in headers:
            headers["x-forwarded-proto"] = "https" if flow.client_conn.tls_established else "http"
        if "x-forwarded-host" not in headers:
            headers["x-forwarded-host"] = flow.request.host_header or ""
