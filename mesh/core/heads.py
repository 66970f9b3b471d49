"""Request head checks (RFC 9110, RFC 9112, RFC 9113): a request that fails one is refused with a 400
(505 for an HTTP major version the proxy does not speak) before any addon decides anything, and is
never forwarded.

Pure functions over the parsed head, no mitmproxy: every HTTP engine of the proxy calls `check`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mesh.config.http import ALLOW, REJECT_REQUEST  # the option's values: the config owns them
# the field grammar sits in the lowest layer: a function's response fields are checked with it too
from mesh.config.types import BAD_FIELD_VALUE as _BAD_VALUE, TOKEN as _TOKEN, clip as _clip
from mesh.core import hopbyhop
from mesh.core.paths import Rejected

# RFC 9110 §7.2 / RFC 3986 §3.2.2: uri-host [ ":" port ], or empty (RFC 9112 §3.2). The host is an
# IP literal or a DNS name: labels of letters, digits, '-' and '_' (SRV and container names), and
# one trailing dot (the root). The rest of RFC 3986's reg-name (',', ';', '%2e', …) names no host a
# resolver knows, and an upstream that reads it otherwise (drops what follows a comma, decodes
# '%2e') would see another virtual host than routing did
_HOST = re.compile(rb"(?:(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?)"
                   rb"(?::[0-9]*)?)?")
_HTTP1 = ("HTTP/1.1", "HTTP/1.0")


def check(version: str, method: bytes, fields: Iterable[tuple[bytes, bytes]], h2: bool = False,
          authority: bytes = b"") -> None:
    """Raise `Rejected` for the first thing wrong with a request head: its HTTP version (`h2`: it
    came over HTTP/2), its method, a field name or value, its Host fields or `authority` (HTTP/2's
    `:authority`, an absolute-form target's), what its Connection field nominates, or its message
    framing."""
    if h2:
        if version != "HTTP/2.0":
            raise Rejected(400, "bad_http_version", f"{version} request on an HTTP/2 connection")
    elif version not in _HTTP1:
        if version[:7] == "HTTP/1.":
            raise Rejected(400, "bad_http_version",
                           f"unknown HTTP version {version[:16]!r}: HTTP/1.0 and HTTP/1.1 are accepted")
        raise Rejected(505, "http_version_not_supported",
                       f"HTTP version {version[:16]!r} is not spoken here (RFC 9110 §15.6.6)")
    if not _TOKEN.fullmatch(method):
        # HTTP/2's :method can hold what HTTP/1's request line splits on: "GET /admin" would become
        # the upstream's request line `GET /admin /x HTTP/1.1`
        raise Rejected(400, "invalid_method",
                       f"the method {_clip(method)} is not a token (RFC 9110 §9.1)")
    hosts: list[bytes] = []
    connection: list[bytes] = []
    lengths = encodings = 0
    encoding = b""
    for name, value in fields:
        if not _TOKEN.fullmatch(name):
            raise Rejected(400, "invalid_header", f"invalid header name {_clip(name)} (RFC 9110 §5.1)")
        bad = _BAD_VALUE.search(value)
        if bad:
            what = ("a folded line (obs-fold, RFC 9112 §5.2)" if value[bad.start():bad.start() + 3] in
                    (b"\r\n ", b"\r\n\t") else f"the control character {bad.group()!r} (RFC 9110 §5.5)")
            raise Rejected(400, "invalid_header", f"header {_clip(name)} holds {what}")
        lower = name.lower()
        if lower == b"host":
            hosts.append(value)
        elif lower == b"content-length":
            lengths += 1
            if not value.isdigit():
                raise Rejected(400, "invalid_framing", f"invalid Content-Length {_clip(value)} (RFC 9110 §8.6)")
        elif lower == b"transfer-encoding":
            encodings += 1
            encoding = value
        elif lower == b"connection":
            connection.append(value)
    if len(hosts) > 1:
        raise Rejected(400, "invalid_host", f"{len(hosts)} Host header fields (RFC 9112 §3.2)")
    if not hosts and version == "HTTP/1.1":
        raise Rejected(400, "invalid_host", "an HTTP/1.1 request without a Host header field (RFC 9112 §3.2)")
    if hosts and not _HOST.fullmatch(hosts[0]):
        raise Rejected(400, "invalid_host", f"invalid Host {_clip(hosts[0])} (RFC 9110 §7.2)")
    if connection and (why := hopbyhop.refusal(hopbyhop.tokens(connection))):
        raise Rejected(400, "invalid_header", why)
    if authority and not _HOST.fullmatch(authority):
        raise Rejected(400, "invalid_host",
                       f"invalid authority {_clip(authority)} (RFC 9110 §7.2)")
    _framing(version, h2, lengths, encodings, encoding)


def fold(name: bytes) -> bytes:
    """A field name as a CGI or WSGI upstream reads it (RFC 3875 §4.1.18: case folded, `-` and `_`
    alike): `X_User` and `x-user` reach such an upstream as one variable, HTTP_X_USER."""
    return name.lower().replace(b"_", b"-")


def underscores(fields: Iterable[tuple[bytes, bytes]], action: str
                ) -> tuple[tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]]:
    """`headers_with_underscores_action` on a request's fields: (the fields to keep, the names
    dropped). REJECT_REQUEST raises `Rejected` for the first name holding `_`; ALLOW keeps all."""
    fields = tuple(fields)
    if action == ALLOW or not any(b"_" in name for name, _ in fields):
        return fields, ()
    if action == REJECT_REQUEST:
        name = next(name for name, _ in fields if b"_" in name)
        raise Rejected(400, "invalid_header", f"header name {_clip(name)} holds an underscore "
                                              f"(headers_with_underscores_action: REJECT_REQUEST)")
    return (tuple(f for f in fields if b"_" not in f[0]),
            tuple(dict.fromkeys(name for name, _ in fields if b"_" in name)))


def without_root_dot(authority: str) -> str:
    """A checked Host without the trailing dot of its name (`admin.example.com.:8080` →
    `admin.example.com:8080`): the same DNS name, in the form routes name it (Envoy's
    `strip_trailing_host_dot`)."""
    if authority[:1] == "[":  # an IP literal has no such dot
        return authority
    if authority[-1:] == ".":
        return authority[:-1]
    return authority.replace(".:", ":", 1) if ".:" in authority else authority


def _framing(version: str, h2: bool, lengths: int, encodings: int, encoding: bytes) -> None:
    """RFC 9112 §6: one way to find where the body ends, or the request is refused (smuggling)."""
    if lengths > 1:
        raise Rejected(400, "invalid_framing", "more than one Content-Length (RFC 9112 §6.3)")
    if not encodings:
        return
    if h2:
        raise Rejected(400, "invalid_framing", "Transfer-Encoding on HTTP/2 (RFC 9113 §8.2.2)")
    if lengths:
        raise Rejected(400, "invalid_framing", "both Content-Length and Transfer-Encoding (RFC 9112 §6.1)")
    if encodings > 1 or version != "HTTP/1.1":
        raise Rejected(400, "invalid_framing", "Transfer-Encoding repeated or on HTTP/1.0 (RFC 9112 §6.1)")
    codings = [c.strip().lower() for c in encoding.split(b",")]
    if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        raise Rejected(400, "invalid_framing", f"Transfer-Encoding {_clip(encoding)} does not end in a "
                                               f"single chunked (RFC 9112 §6.1)")

