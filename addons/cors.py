"""Cors: answers a route's CORS preflights (before authentication: browsers send them without
credentials) and adds CORS headers to its responses, including the proxy's own 401/403/429.

Alone: `mitmdump -s addons/cors.py --set mesh_cors='{allow_origins: [https://app.example]}'`.
"""

from __future__ import annotations

from mitmproxy import http

from addons import alone, keys, replies
from mesh.config import schema
from mesh.policies.cors import CorsPolicy


class Cors:
    plan_fields = ("cors",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def _policy(self, flow: http.HTTPFlow) -> CorsPolicy | None:
        st = keys.get(flow)
        if st is None or st.route is None:
            return None
        return st.route.plan.cors

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None:
            return
        req = flow.request
        if req.method != "OPTIONS" or "access-control-request-method" not in req.headers:
            return
        origin = req.headers.get("origin")
        policy = st.route.plan.cors
        if policy is None or origin is None:
            return  # not ours to answer: the upstream may handle CORS itself
        headers, why = policy.preflight(origin, req.headers["access-control-request-method"],
                                        req.headers.get("access-control-request-headers"))
        if headers is None:
            st.decide("cors", f"preflight refused: {why}")
            replies.reply(flow, 403, "cors_denied", why)
            return
        st.decide("cors", f"preflight from {origin} answered")
        replies.raw(flow, 204, b"", tuple(headers.items()))

    def response(self, flow: http.HTTPFlow):
        origin = flow.request.headers.get("origin")
        if origin is None or flow.response is None or flow.request.method == "OPTIONS":
            return
        policy = self._policy(flow)
        if policy is not None:
            for name, value in policy.response(origin).items():
                flow.response.headers[name] = value


addons = alone.script(Cors(), blocks=[alone.Block(
    "mesh_cors", "policies", "cors", schema.Cors,
    "Answer CORS preflights and add CORS headers: a cors policy of mesh.yaml in YAML flow style, e.g. "
    "'{allow_origins: [https://app.example], allow_credentials: true}'. Empty: off.")])
