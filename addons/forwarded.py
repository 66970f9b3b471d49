"""X-Forwarded-For/-Proto/-Host: tell the upstream who the downstream client really is."""

from __future__ import annotations

from mitmproxy import http

from . import keys


class Forwarded:
    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response or keys.get(flow) is None:
            return
        headers = flow.request.headers
        client_ip = flow.client_conn.peername[0]
        prior = headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{prior}, {client_ip}" if prior else client_ip
        headers["x-forwarded-proto"] = "https" if flow.client_conn.tls_established else "http"
        if "x-forwarded-host" not in headers:
            headers["x-forwarded-host"] = flow.request.host_header or ""
