"""API versioning: reads the version a request asks for, sends it to that version's cluster, and
marks a deprecated version's responses (Deprecation, Sunset, Link to its successor)."""

from __future__ import annotations

from mitmproxy import http

from mesh.core.versioning import Versioning as Policy

from . import keys, replies


class Versioning:
    plan_fields = ("versioning",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None:
            return
        policy: Policy | None = st.route.plan.versioning
        if policy is None:
            return
        req = flow.request
        path = st.upstream_path or "/"
        res = policy.resolve(path, req.headers.get, lambda: req.query)
        supported = list(policy.supported)
        if res.version is None:
            if res.requested is None:
                reason = f"name an API version: one of {', '.join(supported)}"
                error = "api_version_required"
            else:
                reason = (f"API version {res.requested!r} (from the {res.source.replace('_', ' ')}) is not "
                          f"supported; supported: {', '.join(supported)}")
                error = "unsupported_api_version"
            st.decide("versioning", reason)
            replies.reply(flow, 400, error, reason, supported=supported)
            return
        version = res.version
        st.version_cluster = version.cluster
        st.versioned_path = res.path
        flow.metadata[keys.API_VERSION] = version.name
        st.decide("versioning", f"API version {version.name} (from {res.source}) → {version.cluster}")
        if version.headers or version.successor:
            link = policy.link(res, path, req.path.partition("?")[2])
            st.version_headers = version.headers + ((("Link", link),) if link else ())

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None or not st.version_headers or flow.response is None:
            return
        headers = flow.response.headers
        for name, value in st.version_headers:
            if name == "Link" and name in headers:
                headers.add(name, value)  # keep the upstream's links
            else:
                headers[name] = value
