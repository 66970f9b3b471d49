"""SecurityHeaders: security response headers from the route's `security_headers` policy (or the
gateway's default policies for answers made before routing); HSTS only over HTTPS."""

from __future__ import annotations

from mitmproxy import http

from mesh.core.compiled import PerSnapshot
from mesh.config.security import SecurityHeaders as Config
from mesh.core.state import Snapshot

from . import keys

Headers = tuple[tuple[str, str], ...]


def headers_of(c: Config) -> tuple[Headers, str | None]:
    """(headers for every response, Strict-Transport-Security value for HTTPS)."""
    out = [(name, value) for name, value in (
        ("x-content-type-options", c.content_type_options), ("x-frame-options", c.frame_options),
        ("referrer-policy", c.referrer_policy), ("content-security-policy", c.content_security_policy),
    ) if value is not None]
    out += list(c.headers.items())
    hsts = None
    if c.hsts is not None:
        hsts = f"max-age={c.hsts.max_age}" + ("; includeSubDomains" if c.hsts.include_subdomains else "") \
            + ("; preload" if c.hsts.preload else "")
    return tuple(out), hsts


def compile_headers(snap: Snapshot) -> tuple[dict[int, tuple[Headers, str | None]], tuple[Headers, str | None] | None]:
    routes = {r.index: headers_of(r.policies["security_headers"])
              for r in snap.routes.routes if "security_headers" in r.policies}
    config = snap.config
    default = next((config.policies[n].security_headers for n in config.gateway.policies
                    if config.policies[n].security_headers is not None), None)
    return routes, headers_of(default) if default is not None else None


class SecurityHeaders:
    def __init__(self):
        self._headers = PerSnapshot(compile_headers)

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None or flow.response is None:
            return
        routes, default = self._headers.get(st.snapshot)
        found = routes.get(st.route.index) if st.route is not None else default
        if found is None:
            return
        always, hsts = found
        h = flow.response.headers
        for name, value in always:
            if name not in h:
                h[name] = value
        if hsts is not None and flow.client_conn.tls_established and "strict-transport-security" not in h:
            h["strict-transport-security"] = hsts
