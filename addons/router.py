"""Router: picks the route for a request (first match, indexed), answers 404, direct and redirects."""

from __future__ import annotations

from mitmproxy import http

from mesh.core.routing import DirectAction, RedirectAction

from . import keys, replies


class Router:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.unanswered(flow)
        if st is None:
            return
        req = flow.request
        path = st.path  # normalized by Normalize
        host = req.host_header or ""
        match = st.snapshot.routes.match
        route = None
        if req.method == "OPTIONS" and "origin" in req.headers and "access-control-request-method" in req.headers:
            # a CORS preflight goes to the route its real request will take, where Cors answers it;
            # a route without a CORS policy answers none: then it is routed as the OPTIONS it is
            route = match(host, path, req.headers["access-control-request-method"].upper(),
                          req.headers.get, lambda: req.query)
            if route is not None and route.plan.cors is None:
                route = None
        if route is None:
            route = match(host, path, req.method, req.headers.get, lambda: req.query)
        if route is None:
            st.decide("router", f"no route for {req.method} {path} on host {host}")
            replies.reply(flow, 404, "no_route", f"no route for {req.method} {path} on host {host}")
            return
        st.decide("router", f"route {route.name} matched {req.method} {path} on host {host}")
        st.route = route
        flow.metadata[keys.ROUTE] = route.name
        action = route.action
        if isinstance(action, DirectAction):
            replies.raw(flow, action.status, action.body, action.headers)
        elif isinstance(action, RedirectAction):
            replies.raw(flow, action.status, b"", (("location", action.location),))
