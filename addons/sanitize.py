"""Sanitize: removes the headers only the proxy may set (verified claims, consumer names) from
every request, before routing or any upstream can see a forged one, in every spelling that reads as
one of them once case and `_` are folded (a CGI/WSGI upstream reads `X_User` as x-user), whatever
`headers_with_underscores_action` let through."""

from __future__ import annotations

from mitmproxy import http

from mesh.core.heads import fold

from . import keys


class Sanitize:
    def requestheaders(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is None:
            return
        claims = st.snapshot.claim_headers
        if not claims:
            return
        fields = flow.request.headers.fields
        kept = tuple(f for f in fields if fold(f[0]) not in claims)
        if len(kept) != len(fields):
            flow.request.headers.fields = kept
            for name in dict.fromkeys(n for n, _ in fields if fold(n) in claims):
                st.decide("sanitize", f"removed {name.decode('latin-1')} sent by the client")
