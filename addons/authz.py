"""Authz: allows or denies a request by its peer identity, address, method, path and verified
claims (Istio's AuthorizationPolicy semantics, mesh/policies/authz.py); denied requests get a JSON 403.

On the gateway a route's `authz` policy applies; on a sidecar, the `authz` of its own service
(`services.NAME.policies`) applies at the inbound listener only: a policy protects the workload
that has it, so the caller's outbound side never evaluates the destination's policy.
"""

from __future__ import annotations

from mitmproxy import http

from mesh.policies import authz
from mesh.core.compiled import PerSnapshot
from mesh.core.sidecar import inbound_route
from mesh.core.state import Snapshot

from . import keys, replies


def compile_policies(snap: Snapshot) -> dict[str, authz.Policy]:
    """Route name → compiled policy: the gateway's routes, or a sidecar's inbound route."""
    if snap.workload is not None:
        model = inbound_route(snap).policies.get("authz")
        where = f"service {snap.workload.service}"
        return {"inbound": authz.compile_policy(model, where)} if model is not None else {}
    return {route.name: authz.compile_policy(route.policies["authz"], f"route {route.name}")
            for route in snap.routes.routes if "authz" in route.policies}


class Authz:
    def __init__(self):
        self._policies = PerSnapshot(compile_policies)

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st = keys.get(flow)
        if st is None or st.route is None or st.direction == keys.OUTBOUND:
            return
        policy = self._policies.get(st.snapshot).get(st.route.name)
        if policy is None:
            return
        req = flow.request
        path = st.upstream_path or st.path
        allowed, why = policy.decide(
            authz.Request(st.peer, flow.client_conn.peername[0], req.method, path, st.claims))
        st.decide("authz", why)
        if not allowed:
            replies.reply(flow, 403, "access_denied", why)
