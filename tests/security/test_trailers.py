"""Trailer sections on chunked request bodies, sent as raw bytes (HTTP/1, both engines) to a real
gateway and a real sidecar inbound, and as HTTP/2 trailers to the gateway. Before, each such request
got no answer at all and left a traceback in the proxy's log (mitmproxy: "HTTP trailers are not
implemented yet"), a cheap way to flood the log. Trailer fields are read and discarded (RFC 9110
§6.5.1): the request is served, and no trailer field reaches the app, as a header or otherwise."""

from __future__ import annotations

import contextlib

import h2.events
import pytest

from .conftest import H2, Target, assert_refused, read_reply, sending_on, targets

CHUNKED = "POST /app/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, engine):
    with targets(tmp_path_factory.mktemp("trailers"), tls=True, engine=engine) as m:
        yield m


def no_traceback(target: Target) -> None:
    log = target.log.read_text(errors="replace")
    assert "Traceback" not in log and "NotImplementedError" not in log, log[-2000:]


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("trailers", ["X-Foo: a\r\n", "X-User: admin\r\nHost: admin.internal\r\n",
                                      "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"],
                         ids=["chunked-body-with-trailers", "trailers-smuggling-headers",
                              "trailers-naming-the-framing"])
def test_trailer_section_is_dropped_and_the_request_served(mesh, where, trailers):
    target = mesh.targets[where]
    before = target.hits()
    with contextlib.closing(target.connect()) as s:
        s.sendall((CHUNKED + "0\r\n" + trailers + "\r\n").encode())
        first = read_reply(s)
        # the connection serves on: the trailer section ended where it said
        s.sendall(b"GET /app/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        second = read_reply(s)
    assert first.status == 200, first.raw[:300]
    assert first.json["body"] == "ab"
    headers = dict(first.json["headers"])
    assert "x-foo" not in headers and "x-user" not in headers and headers["host"] == "x", headers
    assert second.status == 200 and second.json["path"] == "/app/y", second.raw[:300]
    assert target.hits() == before + 2
    no_traceback(target)


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_endless_trailer_section_is_refused_and_closed(mesh, where):
    """h11 buffers a trailer section until its blank line, as mitmproxy does a head: capped alike,
    and the connection closed at once while the client sends on (it was left open, unread, until
    the worker's garbage collector came by ~20 s later)."""
    target = mesh.targets[where]
    before = target.hits()
    reply = sending_on(target, (CHUNKED + "0\r\nX-Big: " + "a" * 300_000).encode())
    assert_refused(reply, 431, "headers_too_large")
    assert reply.closed, "the connection stays open after the trailer section was refused"
    assert target.hits() == before
    no_traceback(target)


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_malformed_trailer_line_is_refused(mesh, where):
    target = mesh.targets[where]
    before = target.hits()
    reply = target.send((CHUNKED + "0\r\nX-Foo a\r\n\r\n").encode(), until_closed=True)
    assert_refused(reply, 400, "invalid_body")
    assert reply.closed and target.hits() == before
    no_traceback(target)


def test_http2_trailers_are_not_forwarded(mesh):
    """HTTP/2 trailers (a second HEADERS frame ending the stream): served, and not made headers."""
    target = mesh.targets["gateway-tls"]
    client = H2(target)
    try:
        sid = client.headers("/app/x", "POST", end_stream=False)
        client.conn.send_data(sid, b"ab")
        client.conn.send_headers(sid, [("x-foo", "a"), ("x-user", "admin")], end_stream=True)
        client.flush()
        status, _, body = client.response(sid)
        assert not any(isinstance(e, h2.events.StreamReset) for e in client.events)
    finally:
        client.close()
    assert status == 200, body
    assert b'"body": "ab"' in body and b"x-foo" not in body and b"x-user" not in body, body
    no_traceback(target)
