"""Sticky canary split: hashes the route's sticky key (cookie, header or verified claim) to one version,
so a user keeps the same version for as long as the weights allow; random split without a key."""

from __future__ import annotations

from mitmproxy import http

from mesh.core import canary
from mesh.core.routing import ForwardAction, parse_cookies
from mesh.policies.transform import claim

from . import keys


class Canary:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None or st.version_cluster is not None:
            return
        action = st.route.action
        if not isinstance(action, ForwardAction) or action.sticky is None or len(action.clusters) < 2:
            return
        sticky = action.sticky
        if sticky.kind == "cookie":
            value = parse_cookies(flow.request.headers.get("cookie")).get(sticky.name)
            if value is None and sticky.ttl is not None:
                value = canary.new_key()
                st.set_cookie = (f"{sticky.name}={value}; Path=/; Max-Age={int(sticky.ttl)}; "
                                 f"HttpOnly; SameSite=Lax")
        elif sticky.kind == "header":
            value = flow.request.headers.get(sticky.name)
        else:
            found = claim(st.claims, sticky.name)
            value = None if found is None else str(found)
        if not value:
            st.decide("canary", f"no {sticky.kind} {sticky.name}: random split")
            return
        st.sticky_point = canary.point(value, action.service)
        st.decide("canary", f"{sticky.kind} {sticky.name} hashed to {action.pick_cluster(st.sticky_point)}")

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is not None and st.set_cookie and flow.response is not None:
            flow.response.headers.add("set-cookie", st.set_cookie)
