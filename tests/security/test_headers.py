"""Malformed request heads (RFC 9110/9112): control characters and folded lines in header values,
Host games, HTTP versions the proxy does not speak, broken framing and chunk sizes. Each is sent as
raw bytes to a real gateway and a real sidecar inbound: the answer is the proxy's JSON (never
mitmproxy's HTML page or its name), and the request never reaches the app."""

from __future__ import annotations

import contextlib
import socket

import pytest

from .conftest import assert_refused, closes_within, read_reply, request, sending_on, targets

GET = "GET /app/x HTTP/1.1\r\nHost: x\r\n"

CASES = [
    # header values (RFC 9110 §5.5): nothing a downstream parser could split or misread
    ("nul-in-header-value", GET + "X-A: a\x00b\r\n\r\n", 400, "invalid_header"),
    ("bare-cr-smuggles-a-header", GET + "X-A: a\rx-user: admin\r\n\r\n", 400, "invalid_header"),
    ("obs-fold-continuation-line", GET + "X-A: a\r\n x-user: admin\r\n\r\n", 400, "invalid_header"),
    ("obs-fold-with-tab", GET + "X-A: a\r\n\tx-user: admin\r\n\r\n", 400, "invalid_header"),
    ("escape-control-character", GET + "X-A: \x1b[31mred\r\n\r\n", 400, "invalid_header"),
    ("delete-character", GET + "X-A: a\x7fb\r\n\r\n", 400, "invalid_header"),
    ("vertical-tab", GET + "X-A: a\x0bb\r\n\r\n", 400, "invalid_header"),
    ("space-in-header-name", GET + "X A: b\r\n\r\n", 400, "invalid_request"),
    ("header-line-without-colon", GET + "X-A b\r\n\r\n", 400, "bad_request"),
    # Host (RFC 9112 §3.2)
    ("two-host-headers", GET + "Host: admin.internal\r\n\r\n", 400, "invalid_host"),
    ("http11-without-host", "GET /app/x HTTP/1.1\r\nX-A: b\r\n\r\n", 400, "invalid_host"),
    ("host-with-path", "GET /app/x HTTP/1.1\r\nHost: x/admin\r\n\r\n", 400, "invalid_host"),
    ("host-with-userinfo", "GET /app/x HTTP/1.1\r\nHost: user@x\r\n\r\n", 400, "invalid_host"),
    # versions (RFC 9112 §2.3, RFC 9110 §15.6.6)
    ("unknown-minor-version", "GET /app/x HTTP/1.2\r\nHost: x\r\n\r\n", 400, "bad_http_version"),
    ("http2-version-over-http1", "GET /app/x HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
    ("http3-version-over-http1", "GET /app/x HTTP/3.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
    ("http09-request-line", "GET /app/x\r\n\r\n", 400, "bad_request"),
    ("garbage-version", "GET /app/x HTTP/1.1x\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ("lowercase-version", "GET /app/x http/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ("not-http-at-all", "hello proxy\r\n\r\n", 400, "bad_request"),
    # framing (RFC 9112 §6-7): one way to find the end of a body, or no request
    ("bad-chunk-size", "POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
     400, "invalid_body"),
    ("chunk-size-overflow", "POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + "f" * 40 + "\r\nab\r\n0\r\n\r\n", 400, "invalid_body"),
    ("chunk-data-longer-than-size", "POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    "2\r\nabcdef\r\n0\r\n\r\n", 400, "invalid_body"),
    ("negative-content-length", "POST /app/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "bad_request"),
    ("plus-signed-content-length", "POST /app/x HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nab",
     400, "bad_request"),
    ("two-content-lengths", "POST /app/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
     400, "bad_request"),
    ("content-length-and-chunked", "POST /app/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", 400, "invalid_request"),
    ("chunked-not-last-encoding", "POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                                  "2\r\nab\r\n0\r\n\r\n", 400, "bad_request"),
    ("chunked-on-http10", "POST /app/x HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "2\r\nab\r\n0\r\n\r\n", 400, "invalid_request"),
    # size: mitmproxy itself would buffer a head without end
    ("endless-request-head", GET + "X-Big: " + "a" * 200_000, 431, "headers_too_large"),
]

# a refused body framing is answered and the connection closed at once, even with the client sending
# on behind it: the close once waited for the worker's garbage collector (~20 s, the client's sends
# blocked) whenever more of the body was already buffered (mitmproxy's connection handler, cancelled
# while it waited for its turn behind a finished hook, left without closing the socket)
CHUNKED = "POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
SENDING_ON = [
    ("bad-chunk-size-then-more", CHUNKED + "zz\r\n"),
    ("chunk-size-overflow-then-more", CHUNKED + "f" * 40 + "\r\n"),
    ("chunk-data-longer-than-size-then-more", CHUNKED + "2\r\nabcdef"),
]
# a body the client ends (half-closes) before its framing does
CUT_SHORT = [
    ("chunked-body-cut-short-by-half-close", CHUNKED + "5\r\nab"),
    ("content-length-body-cut-short-by-half-close",
     "POST /app/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab"),
]

ACCEPTED = [
    ("http10-without-host", "GET /app/x HTTP/1.0\r\n\r\n"),
    ("tab-inside-header-value", GET + "X-A: a\tb\r\nConnection: close\r\n\r\n"),
    ("valid-chunked-body", "POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                           "2\r\nab\r\n0\r\n\r\n"),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, engine):
    with targets(tmp_path_factory.mktemp("headers"), engine=engine) as m:
        yield m


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("head, status, error", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_head_is_refused_and_never_forwarded(mesh, where, head, status, error):
    target = mesh.targets[where]
    before = target.hits()
    reply = target.send(head.encode("latin-1"), until_closed=True)
    assert_refused(reply, status, error)
    assert reply.closed, "the connection stays open after a malformed request"
    assert target.hits() == before, "a malformed request reached the app"


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("head", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_well_formed_head_is_served(mesh, where, head):
    target = mesh.targets[where]
    before = target.hits()
    reply = target.send(head.encode("latin-1"))
    assert reply.status == 200, reply.raw[:300]
    assert target.hits() == before + 1


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_bare_cr_header_never_arrives_upstream(mesh, where):
    """The issue's report: `X-A: a\\rx-user: admin` arrived byte for byte; a clean request right after
    it on another connection shows what the app gets (no x-user)."""
    target = mesh.targets[where]
    assert_refused(target.send((GET + "X-A: a\rx-user: admin\r\n\r\n").encode()), 400, "invalid_header")
    reply = target.send(request("GET", "/app/x", {"X-A": "a", "Connection": "close"}))
    assert reply.status == 200
    assert "x-user" not in dict(reply.json["headers"])


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("head", [c[1] for c in SENDING_ON], ids=[c[0] for c in SENDING_ON])
def test_refused_body_framing_closes_while_the_client_sends_on(mesh, where, head):
    target = mesh.targets[where]
    before = target.hits()
    reply = sending_on(target, head.encode() + b"a" * 300_000)
    assert_refused(reply, 400, "invalid_body")
    assert reply.closed, "the connection stays open after a refused body framing"
    assert target.hits() == before


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("head", [c[1] for c in CUT_SHORT], ids=[c[0] for c in CUT_SHORT])
def test_body_cut_short_is_refused_and_closed(mesh, where, head):
    target = mesh.targets[where]
    before = target.hits()
    with contextlib.closing(target.connect()) as s:
        s.sendall(head.encode())
        s.shutdown(socket.SHUT_WR)
        reply = read_reply(s)
        closed = closes_within(s, 2.0)
    assert_refused(reply, 400, "invalid_body")
    assert closed, "the connection stays open after a body cut short"
    assert target.hits() == before
