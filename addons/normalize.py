"""Normalize: checks the request head (RFC 9110/9112) and normalizes its path (RFC 3986 §6) once,
before any addon decides anything; every addon after it reads `FlowState.path`, and the upstream gets
the same path. A request that fails is answered 400 (or 505, or 307 for UNESCAPE_AND_REDIRECT).
Header names holding `_` are dropped or refused here (`headers_with_underscores_action`)."""

from __future__ import annotations

from mitmproxy import http

from mesh.core import heads, paths

from . import keys, replies


class Normalize:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.unanswered(flow)
        if st is None:
            return
        req = flow.request
        raw, mark, query = req.path.partition("?")
        opts = st.snapshot.http
        try:
            heads.check(req.http_version, req.data.method, req.headers.fields,
                        flow.client_conn.alpn == b"h2", req.data.authority)
            paths.check_query(query)  # before a redirect could put it into a Location
            fields, dropped = heads.underscores(req.headers.fields, opts.headers_with_underscores_action)
            path = paths.normalize(raw, normalize_path=opts.normalize_path, merge_slashes=opts.merge_slashes,
                                   escaped_slashes=opts.path_with_escaped_slashes_action)
        except paths.Redirect as r:
            st.decide("normalize", f"path {raw!r} has escaped slashes: redirected to {r.path!r}")
            replies.reply(flow, 307, "path_redirect", "the path holds escaped slashes; use the unescaped one",
                          headers={"location": r.path + mark + query})
            return
        except paths.Rejected as e:
            st.decide("normalize", e.reason)
            replies.reply(flow, e.status, e.error, e.reason, headers={"connection": "close"})
            return
        if dropped:
            req.headers.fields = fields
            names = ", ".join(repr(n.decode("latin-1")) for n in dropped)
            st.decide("normalize", f"dropped header {names}: an underscore in its name "
                                   f"(headers_with_underscores_action: DROP_HEADER)")
        host = req.host_header
        if host and (named := heads.without_root_dot(host)) != host:
            # the upstream gets the name routing and authorization decided on, as with the path
            st.decide("normalize", f"host {host!r} without its trailing dot: {named!r}")
            req.host_header = named
        if path != raw:
            st.decide("normalize", f"path {raw!r} normalized to {path!r}")
            req.path = path + mark + query  # what mitmweb, recordings and the upstream see
        st.path = path
