"""Authz: allows or denies a request by its peer identity, address, method, path and verified
claims (Istio's AuthorizationPolicy semantics, mesh/authz.py); denied requests get a JSON 403."""

from __future__ import annotations

from mitmproxy import http

from mesh import authz
from mesh.compiled import PerSnapshot
from mesh.state import Snapshot

from . import keys, replies


def compile_policies(snap: Snapshot) -> dict[int, authz.Policy]:
    return {route.index: authz.compile_policy(route.policies["authz"], f"route {route.name}")
            for route in snap.routes.routes if "authz" in route.policies}


class Authz:
    def __init__(self):
        self._policies = PerSnapshot(compile_policies)

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st = keys.get(flow)
        if st is None or st.route is None:
            return
        policy = self._policies.get(st.snapshot).get(st.route.index)
        if policy is None:
            return
        req = flow.request
        path = st.upstream_path or req.path.partition("?")[0]
        allowed, why = policy.decide(
            authz.Request(st.peer, flow.client_conn.peername[0], req.method, path, st.claims))
        st.decide("authz", why)
        if not allowed:
            replies.reply(flow, 403, "access_denied", why)
