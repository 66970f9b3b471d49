"""Sanitize: removes the headers only the proxy may set (verified claims, consumer names) from
every request, before routing or any upstream can see a forged one."""

from __future__ import annotations

from mitmproxy import http

from . import keys


class Sanitize:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None:
            return
        headers = flow.request.headers
        for name in st.snapshot.claim_headers:
            if name in headers:
                del headers[name]
                st.decide("sanitize", f"removed {name} sent by the client")
