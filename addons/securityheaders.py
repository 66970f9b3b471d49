"""SecurityHeaders: security response headers from the route's `security_headers` policy (or the
gateway's default policies for answers made before routing); HSTS only over HTTPS."""

from __future__ import annotations

from mitmproxy import http

from . import keys


class SecurityHeaders:
    """Adds the headers the route's plan holds (or the snapshot's default, before routing)."""

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None or flow.response is None:
            return
        found = st.route.plan.security_headers if st.route is not None else st.snapshot.security_headers
        if found is None:
            return
        always, hsts = found
        h = flow.response.headers
        for name, value in always:
            if name not in h:
                h[name] = value
        if hsts is not None and flow.client_conn.tls_established and "strict-transport-security" not in h:
            h["strict-transport-security"] = hsts
