"""Sanitize: removes the headers only the proxy may set (verified claims, consumer names) from
every request, before routing or any upstream can see a forged one."""

from __future__ import annotations

from mitmproxy import http

from mesh.core.compiled import PerSnapshot
from mesh.core.state import Snapshot

from . import keys


def claim_headers(snap: Snapshot) -> tuple[str, ...]:
    """Every header any authentication policy of the config sets from verified claims."""
    names: set[str] = set()
    for policy in snap.config.policies.values():
        for kind in (policy.jwt, policy.oauth2, policy.api_key):
            if kind is not None:
                names.update(kind.forward_claims.values())
    return tuple(sorted(names))


class Sanitize:
    def __init__(self):
        self._names = PerSnapshot(claim_headers)

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None:
            return
        headers = flow.request.headers
        for name in self._names.get(st.snapshot):
            if name in headers:
                del headers[name]
                st.decide("sanitize", f"removed {name} sent by the client")
