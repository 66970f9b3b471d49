"""SizeLimit: refuses request headers above the route's limit (431) and bodies above it (413): by
Content-Length before any body byte is read, and a body without one (chunked, HTTP/2) as soon as what
arrived passes the limit; the HTTP layer (addons/httplayer.py) stops reading it there.

Alone: `mitmdump -s addons/sizelimit.py --set mesh_size_limit='{max_body: 1MiB}'` (without the
HTTP layer of the chain, a body without a length is refused once read).
"""

from __future__ import annotations

from mitmproxy import http

from addons import alone, keys, replies
from mesh.config import schema


def too_large(flow: http.HTTPFlow, st: keys.FlowState, size: int, limit: int, so_far: bool = False) -> None:
    """The 413: `size` is the body's length, or (so_far) what arrived before reading stopped."""
    size_text = f"at least {size}" if so_far else str(size)
    st.decide("sizelimit", f"body of {size_text} bytes over {limit}")
    replies.reply(flow, 413, "body_too_large", f"request body of {size_text} bytes exceeds the limit of {limit}",
                  headers={"connection": "close"})


class SizeLimit:
    plan_fields = ("size_limit",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None or (limit := st.route.plan.size_limit) is None:
            return
        st.max_body = limit.max_body
        req = flow.request
        size = sum(len(k) + len(v) + 4 for k, v in req.headers.fields)
        if size > limit.max_headers:
            st.decide("sizelimit", f"headers of {size} bytes over {limit.max_headers}")
            replies.reply(flow, 431, "headers_too_large",
                          f"request headers of {size} bytes exceed the limit of {limit.max_headers}",
                          headers={"connection": "close"})
            return
        length = req.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit.max_body:
            too_large(flow, st, int(length), limit.max_body)

    def request(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None or (limit := st.route.plan.size_limit) is None:
            return
        size = len(flow.request.raw_content or b"")
        if size > limit.max_body:  # the HTTP layer stops sooner; this holds where no layer of ours runs
            too_large(flow, st, size, limit.max_body)


addons = alone.script(SizeLimit(), blocks=[alone.Block(
    "mesh_size_limit", "policies", "size_limit", schema.SizeLimit,
    "Refuse large requests: a size_limit policy of mesh.yaml in YAML flow style, e.g. "
    "'{max_body: 1MiB, max_headers: 16KiB}' (413 and 431). Empty: no limit.")])
