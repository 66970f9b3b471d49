"""HTTP/2 stream abuse against a real gateway over TLS, with a real HTTP/2 client (the h2 package):
rapid reset (CVE-2023-44487) gets GOAWAY and a closed connection, streams reset before their request
is complete are neither forwarded nor counted by the rate limiter, and the request checks hold on
HTTP/2 as on HTTP/1."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from .conftest import H2, targets

MAX_RESETS = 100  # the default of gateway.http.http2.max_stream_resets


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    limited = {"name": "limited", "match": {"path": {"prefix": "/limited/"}}, "forward": {"service": "edge-echo"},
               "policies": ["five"]}
    with targets(tmp_path_factory.mktemp("h2"), sidecar=False, tls=True, routes=[limited],
                 policies={"five": {"rate_limit": {"minute": 5, "key": "ip"}}}) as m:
        yield m


@pytest.fixture
def target(mesh):
    return mesh.targets["gateway-tls"]


def reset_streams(client: H2, count: int, path: str = "/app/x", complete: bool = True) -> int:
    """Open `count` streams and reset each at once (HEADERS, then RST_STREAM CANCEL), in bursts as an
    attacker sends them; returns how many went out before the server closed the connection."""
    sent = 0
    try:
        for i in range(count):
            sid = client.headers(path, "POST" if not complete else "GET", end_stream=complete) \
                if i % 20 == 19 else _queued(client, path, complete)
            if not complete:
                client.conn.send_data(sid, b"part of a body")
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            if i % 20 == 19:
                client.flush()
            sent += 1
        client.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def _queued(client: H2, path: str, complete: bool) -> int:
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(":method", "GET" if complete else "POST"), (":path", path),
                                   (":scheme", "https"), (":authority", "localhost")], end_stream=complete)
    return sid


def goaway(client: H2) -> h2.events.ConnectionTerminated | None:
    client.read(lambda evs: any(isinstance(e, h2.events.ConnectionTerminated) for e in evs))
    return next((e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)), None)


def test_rapid_reset_gets_goaway_enhance_your_calm_and_the_connection_closed(target):
    before = target.hits()
    client = H2(target)
    try:
        reset_streams(client, 500)
        end = goaway(client)
        assert end is not None and end.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, client.events[-3:]
        assert b"rapid reset" in (end.additional_data or b"")
        client.read(lambda evs: False, timeout=5)
        assert client.closed
    finally:
        client.close()
    # a stream reset right after its HEADERS(END_STREAM) may have been complete when read; the closed
    # connection bounds those at the limit
    assert target.hits() - before <= MAX_RESETS + 1
    fresh = H2(target)  # and the gateway serves on
    try:
        assert fresh.response(fresh.headers("/app/x"))[0] == 200
    finally:
        fresh.close()


def test_resets_under_the_limit_keep_the_connection(target):
    client = H2(target)
    try:
        reset_streams(client, MAX_RESETS // 2)
        status, _, _ = client.response(client.headers("/app/x"))
        assert status == 200 and not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
    finally:
        client.close()


def test_streams_reset_before_their_request_is_complete_are_not_forwarded_nor_counted(target):
    before = target.hits()
    client = H2(target)
    try:
        reset_streams(client, 30, path="/limited/upload", complete=False)
        status, headers, _ = client.response(client.headers("/limited/x"))
        assert status == 200
        assert headers["ratelimit-remaining"] == "4"  # of five a minute: only the complete request counted
    finally:
        client.close()
    assert target.hits() == before + 1


def test_path_normalization_holds_on_http2(target):
    client = H2(target)
    try:
        status, headers, body = client.response(client.headers("/app/%61dmin/users"))
        assert status == 403 and headers["content-type"] == "application/json" and b"access_denied" in body
        status, _, body = client.response(client.headers("/app%2Fadmin"))
        assert status == 400 and b"escaped_slash_in_path" in body
    finally:
        client.close()


@pytest.mark.parametrize("name, value", [("x-a", "a\x00b"), ("x-a", "a\rx-user: admin"), ("x-a", "a\nb")],
                         ids=["h2-nul-in-header-value", "h2-cr-in-header-value", "h2-lf-in-header-value"])
def test_control_characters_in_http2_header_values_are_never_forwarded(target, name, value):
    before = target.hits()
    client = H2(target)
    lax = h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
                                    normalize_outbound_headers=False)
    client.conn.config = lax  # send what a well-behaved client library would refuse to
    try:
        sid = client.headers("/app/x", extra=((name, value),))
        client.read(lambda evs: any(isinstance(e, (h2.events.ConnectionTerminated, h2.events.StreamReset,
                                                   h2.events.ResponseReceived)) for e in evs))
        answered = [e for e in client.events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
        assert not answered or dict(answered[0].headers)[":status"] == "400"
    finally:
        client.close()
    assert target.hits() == before


def test_http2_request_mitmproxy_refuses_gets_our_json_not_its_page(target):
    """A request mitmproxy's own validation refuses (here an unknown :scheme) used to get its HTML
    page with `server: mitmproxy` on HTTP/2; now it is the proxy's JSON like every other refusal."""
    before = target.hits()
    client = H2(target)
    try:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(":method", "GET"), (":path", "/app/x"), (":scheme", "ftp"),
                                       (":authority", "localhost")], end_stream=True)
        client.flush()
        status, headers, body = client.response(sid)
        assert status == 400 and headers["content-type"] == "application/json", (headers, body)
        assert "server" not in headers and b"mitmproxy" not in body.lower() and b"<html" not in body.lower()
    finally:
        client.close()
    assert target.hits() == before
