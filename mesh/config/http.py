"""Config model of how a proxy reads HTTP from its downstream clients (Envoy: the HTTP connection
manager's path normalization, timeouts and HTTP/2 limits): `gateway.http` and `sidecar.http`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mesh.config.types import Duration, Model, Size

# Envoy's HttpConnectionManager.path_with_escaped_slashes_action, without its "implementation
# specific default": what to do with %2F and %5C (either case) in a path (mesh/core/paths.py does it)
KEEP_UNCHANGED = "KEEP_UNCHANGED"
REJECT_REQUEST = "REJECT_REQUEST"
UNESCAPE_AND_REDIRECT = "UNESCAPE_AND_REDIRECT"
UNESCAPE_AND_FORWARD = "UNESCAPE_AND_FORWARD"
ESCAPED_SLASH_ACTIONS = (KEEP_UNCHANGED, REJECT_REQUEST, UNESCAPE_AND_REDIRECT, UNESCAPE_AND_FORWARD)

EscapedSlashesAction = Literal[ESCAPED_SLASH_ACTIONS]  # type: ignore[valid-type]
# Envoy's HttpProtocolOptions.headers_with_underscores_action: what to do with a request header whose
# name holds `_` (a CGI/WSGI upstream reads `x_user` as `x-user`; mesh/core/heads.py does it)
ALLOW = "ALLOW"
DROP_HEADER = "DROP_HEADER"
UNDERSCORE_ACTIONS = (ALLOW, DROP_HEADER, REJECT_REQUEST)
UnderscoresAction = Literal[UNDERSCORE_ACTIONS]  # type: ignore[valid-type]
Engine = Literal["standard", "fast"]
ENGINE_DOC = ("how HTTP/1.1 request heads are read (docs/performance.md §5): standard is mitmproxy's "
              "parser; fast parses them with httptools (llhttp) and hands anything it does not take "
              "plainly (malformed heads, Transfer-Encoding, upgrades, CONNECT) to mitmproxy's; "
              "HTTP/2 and everything after the head is mitmproxy's either way (default standard)")
Timeout = Annotated[Duration, Field(gt=0, le=3600)]


class Http2(Model):
    """HTTP/2 stream limits of a downstream connection."""

    max_stream_resets: Annotated[int, Field(ge=1, le=100_000)] = Field(
        100, description="stream resets (RST_STREAM) a client may send on one connection within "
                         "stream_reset_window; one more and the connection gets GOAWAY "
                         "(ENHANCE_YOUR_CALM) and is closed, against rapid reset, CVE-2023-44487 "
                         "(default 100)")
    stream_reset_window: Annotated[Duration, Field(gt=0, le=3600)] = Field(
        10.0, description="the sliding window of max_stream_resets (default 10s)")


class Http(Model):
    """How the proxy reads requests on every listener it has, before any route or policy sees them."""

    normalize_path: bool = Field(
        True, description="normalize the path as RFC 3986 §6 says (decode percent-encoded unreserved "
                          "characters, upper-case other percent-encodings, a backslash is a slash, "
                          "remove dot segments) before routing, policies and the upstream see it "
                          "(default true)")
    merge_slashes: bool = Field(True, description="merge adjacent slashes: /a//b is /a/b (default true)")
    path_with_escaped_slashes_action: EscapedSlashesAction = Field(
        "REJECT_REQUEST",
        description="a path holding %2F or %5C: REJECT_REQUEST answers 400; KEEP_UNCHANGED forwards "
                    "it as it is; UNESCAPE_AND_FORWARD reads it as / (\\); UNESCAPE_AND_REDIRECT "
                    "answers 307 to the unescaped path (default REJECT_REQUEST). %00 and malformed "
                    "percent-encodings are always a 400")
    headers_with_underscores_action: UnderscoresAction = Field(
        "DROP_HEADER",
        description="a request header whose name holds an underscore (`x_user`, which a CGI/WSGI "
                    "upstream reads as x-user): DROP_HEADER removes it and says so in the decision "
                    "log; REJECT_REQUEST answers 400; ALLOW forwards it (default DROP_HEADER, as "
                    "nginx's underscores_in_headers off; Envoy's edge advice is REJECT_REQUEST). "
                    "Whatever the action, a header that reads as a claim header once case and `_` "
                    "are folded is removed from every request")
    max_request_headers: Annotated[Size, Field(ge=1024, le=1 << 24)] = Field(
        128 << 10, description="an HTTP/1 request head (request line and headers) bigger than this is "
                               "answered 431 and the connection closed, before it is parsed (default "
                               "128KiB, as size_limit.max_headers, which routes can set lower)")
    request_headers_timeout: Timeout = Field(
        10.0, description="time a client has to send a complete request head, from the connection's "
                          "start or, on a kept-alive connection, from the first byte of the next "
                          "request; then the connection is closed (default 10s)")
    request_timeout: Timeout = Field(
        300.0, description="time a client has to send a request body, from the end of its head; then "
                           "the connection is closed (default 300s, as Envoy's edge example)")
    idle_timeout: Timeout = Field(
        60.0, description="a connection with no request in progress for this long is closed (default 60s)")
    http2: Http2 = Field(Http2(), description="HTTP/2 stream limits")
