"""Authz: allows or denies a request by its peer identity, address, method, path and verified
claims (Istio's AuthorizationPolicy semantics, mesh/policies/authz.py); denied requests get a JSON 403.

On the gateway a route's `authz` policy applies; on a sidecar, the `authz` of its own service
(`services.NAME.policies`) applies at the inbound listener only: a policy protects the workload
that has it, so the caller's outbound side never evaluates the destination's policy.
"""

from __future__ import annotations

from mitmproxy import http

from mesh.policies import authz

from . import keys, replies


class Authz:
    plan_fields = ("authz",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None or st.direction == keys.OUTBOUND:
            return
        policy = st.route.plan.authz
        if policy is None:
            return
        req = flow.request
        path = st.upstream_path or st.path
        allowed, why = policy.decide(
            authz.Request(st.peer, flow.client_conn.peername[0], req.method, path, st.claims))
        st.decide("authz", why)
        if not allowed:
            replies.reply(flow, 403, "access_denied", why)
