"""Request and response transformation (Kong request-transformer semantics): headers, query, path and
JSON body fields, with values templated from the request and its verified claims.

Alone: `mitmdump -s addons/transform.py --set mesh_transform='{request: {set: {headers: {x-env: test}}}}'`.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import http

from addons import alone, keys
from mesh.policies import transform
from mesh.config import schema
from mesh.core.routing import ForwardAction


def template_values(flow: http.HTTPFlow, st: keys.FlowState, t: transform.Transform) -> dict[tuple[str, str], Any]:
    """Every value the templates of both sides read, taken from the request once, before any change."""
    values: dict[tuple[str, str], Any] = {}
    req = flow.request
    captures = None
    for ref in t.refs:
        if ref.source == "headers":
            values[ref.key] = req.headers.get(ref.name)
        elif ref.source == "query":
            values[ref.key] = req.query.get(ref.name)
        elif ref.source == "claims":
            values[ref.key] = transform.claim(st.claims, ref.name)
        else:
            if captures is None:
                captures = transform.captures(t.path_regex, st.upstream_path or "/")
            values[ref.key] = captures.get(ref.name)
    return values


def new_body(message: http.Message, side: transform.Side, values: dict) -> bytes | None:
    """The transformed JSON body, or None to leave it as it is: not JSON, compressed (a small
    compressed body may inflate to anything) or over max_body."""
    raw = message.raw_content
    if not raw or len(raw) > side.max_body or message.headers.get("content-encoding", "identity") != "identity":
        return None
    return transform.transform_body(side.body, raw, message.headers.get("content-type"), side.max_body, values)


class Transform:
    plan_fields = ("transform",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def request(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None:
            return
        t: transform.Transform | None = st.route.plan.transform
        if t is None:
            return
        values = st.transform_values = template_values(flow, st, t)  # the response side reads them too
        side = t.request
        if side is None:
            return
        req = flow.request
        if side.path is not None and isinstance(st.route.action, ForwardAction):
            st.final_path = side.path.apply(st.route.action.rewrite(st.upstream_path or "/"), values)
            # Forward sends final_path; plain mitmproxy (loaded alone) sends the request's own path
            query = req.path.partition("?")[2]
            req.path = st.final_path + ("?" + query if query else "")
        if side.headers:
            transform.apply_multi(side.headers, req.headers, values)
        if side.query:
            query = req.query.copy()
            transform.apply_multi(side.query, query, values)
            req.query = query.fields
        if side.body:
            body = new_body(req, side, values)
            if body is not None:
                req.content = body
        st.decide("transform", "request transformed" + (f", upstream path {st.final_path}" if st.final_path else ""))

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None or st.transform_values is None or flow.response is None or st.route is None:
            return  # only responses to requests that went upstream (not the gateway's own answers)
        t: transform.Transform = st.route.plan.transform
        side = t.response
        if side is None:
            return
        resp = flow.response
        if side.headers:
            transform.apply_multi(side.headers, resp.headers, st.transform_values)
        if side.body:
            body = new_body(resp, side, st.transform_values)
            if body is not None:
                resp.content = body


addons = alone.script(Transform(), blocks=[alone.Block(
    "mesh_transform", "policies", "transform", schema.Transform,
    "Change requests and responses: a transform policy of mesh.yaml in YAML flow style, e.g. "
    "'{request: {set: {headers: {x-env: test}}, path: {strip_prefix: /api}}, "
    "response: {remove: {headers: [server]}}}'. Empty: off.")])
