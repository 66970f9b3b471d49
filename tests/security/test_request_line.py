"""The request line and the Host: methods that are not tokens, raw bytes in the query, and hosts
that are not DNS names, sent as raw bytes (HTTP/1, both engines) and as HTTP/2 pseudo-headers to a
real gateway and a real sidecar inbound. Before, an HTTP/2 `:method` of `GET /app/admin` reached the
upstream as the request line `GET /app/admin /app/x HTTP/1.1` (authorization had judged /app/x), and
`Host: admin.example.com.` skipped the route of `admin.example.com` that asks for an API key."""

from __future__ import annotations

import time

import h2.config
import h2.events
import pytest

from mesh.policies import apikeys

from .conftest import H2, Target, assert_refused, request, targets

KEY = "admin-key-0123456789"
# a virtual host that wants an API key, before the battery's host-agnostic catch-all route
ADMIN = {"name": "ng-admin", "match": {"host": ["admin.example.com"], "path": {"prefix": "/"}},
         "forward": {"service": "edge-echo"}, "policies": ["keyed", "guard"]}
KEYED = {"keyed": {"api_key": {"consumers": {"ops": {"key_sha256": apikeys.digest(KEY)}}}}}



def line(method: str = "GET", target: str = "/app/x") -> str:
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n"


def host(value: str) -> str:
    return f"GET /app/x HTTP/1.1\r\nHost: {value}\r\n\r\n"


# (id, raw request, error): refused with a JSON 400, nothing forwarded
REFUSED = [
    # RFC 9110 §9.1: a method is a token
    ("control-character-in-method", line("G\x01ET"), "invalid_method"),
    ("escape-character-in-method", line("G\x1bET"), "invalid_method"),
    ("question-mark-in-method", line("GET?"), "invalid_method"),
    ("slash-in-method", line("GET/app/admin"), "invalid_method"),
    ("vertical-tab-in-method", line("G\x0bET"), "bad_request"),  # mitmproxy's split refuses it
    # RFC 9112 §3.2, RFC 3986: no control character, space or '#' anywhere in the target
    ("control-characters-in-query", line(target="/app/x?q=\x01\x7f\x1b[31m"), "invalid_query"),
    ("nul-in-query", line(target="/app/x?q=a\x00b"), "invalid_query"),
    ("delete-in-query", line(target="/app/x?q=a\x7f"), "invalid_query"),
    ("fragment-in-query", line(target="/app/x?q=a#/app/admin"), "invalid_query"),
    ("tab-in-query", line(target="/app/x?q=a\tb"), "bad_request"),  # mitmproxy's split refuses it
    # bytes that are no UTF-8 (sent as they are: line().encode("latin-1")); before, the gateway's
    # forward stage failed on them and mitmproxy answered 502
    ("byte-not-utf8-in-path", line(target="/app/x\xff"), "invalid_path"),
    ("overlong-slash-in-path", line(target="/app\xc0\xafadmin"), "invalid_path"),
    ("latin-1-in-query", line(target="/app/x?q=caf\xe9"), "invalid_query"),
    # RFC 9110 §7.2, RFC 3986 §3.2.2: a Host is a DNS name, an IP literal or IPv4, and a port
    ("comma-in-host", host("admin.example.com,x"), "invalid_host"),
    ("semicolon-in-host", host("admin.example.com;x"), "invalid_host"),
    ("percent-encoded-dot-in-host", host("admin%2eexample.com"), "invalid_host"),
    ("empty-label-in-host", host("admin..example.com"), "invalid_host"),
    ("two-trailing-dots-in-host", host("admin.example.com.."), "invalid_host"),
    ("quote-in-host", host("admin.example.com'"), "invalid_host"),
]

# (id, Host): served; the app gets the Host without the trailing dot
SERVED_HOSTS = [
    ("unregistered-token-method", "x"),  # sent as PURGE below: a token, so a method
    ("host-with-port", "shop.example.com:8080"),
    ("ipv4-host-with-port", "127.0.0.1:80"),
    ("ipv6-literal-host", "[::1]:8080"),
    ("underscore-in-host", "my_service.internal"),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, engine):
    with targets(tmp_path_factory.mktemp("request-line"), tls=True, routes=[ADMIN],
                 policies=KEYED, engine=engine) as m:
        yield m


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("head, error", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_request_line_or_host_that_is_not_http_is_refused_and_never_forwarded(mesh, where, head,
                                                                             error):
    target = mesh.targets[where]
    before = target.hits()
    reply = target.send(head.encode("latin-1"), until_closed=True)
    body = assert_refused(reply, 400, error)
    assert reply.closed, "the connection stays open after a malformed request"
    assert "\x01" not in body["reason"] and "\x1b" not in body["reason"], body
    assert target.hits() == before, "the request reached the app"


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("case, host", SERVED_HOSTS, ids=[c[0] for c in SERVED_HOSTS])
def test_well_formed_method_and_host_are_served(mesh, where, case, host):
    target = mesh.targets[where]
    method = "PURGE" if case == "unregistered-token-method" else "GET"
    reply = target.send(request(method, "/app/x?q=a%20b", {"Host": host, "Connection": "close"}))
    assert reply.status == 200, reply.raw[:300]
    assert reply.json["method"] == method and dict(reply.json["headers"])["host"] == host


VHOSTS = [
    ("trailing-dot-host-skips-vhost-route", "admin.example.com."),
    ("trailing-dot-host-with-port", "admin.example.com.:80"),
    ("trailing-dot-host-in-capitals", "Admin.Example.Com."),
    ("vhost-route-itself", "admin.example.com"),
    ("vhost-route-with-port", "admin.example.com:80"),
]


@pytest.mark.parametrize("host", [c[1] for c in VHOSTS], ids=[c[0] for c in VHOSTS])
def test_trailing_dot_host_gets_the_route_of_its_name(mesh, host):
    """Before, `Host: admin.example.com.` matched the catch-all route instead of ng-admin, and an
    upstream that strips the dot (nginx) served its admin vhost without the API key."""
    target = mesh.targets["gateway"]
    before = target.hits()
    reply = target.send(request("GET", "/shop/public/x", {"Host": host}))
    assert_refused(reply, 401, "missing_credentials")
    assert target.hits() == before
    keyed = {"Host": host, "X-API-Key": KEY, "Connection": "close"}
    reply = target.send(request("GET", "/shop/public/x", keyed))
    assert reply.status == 200, reply.raw[:300]


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_trailing_dot_is_removed_from_the_forwarded_host(mesh, where):
    """The upstream gets the name routing and authorization decided on, as with the path."""
    target = mesh.targets[where]
    reply = target.send(request("GET", "/app/x", {"Host": "shop.example.com.:8080",
                                                  "Connection": "close"}))
    assert reply.status == 200, reply.raw[:300]
    assert dict(reply.json["headers"])["host"] == "shop.example.com:8080"


def lax_h2(target: Target, header_encoding: str | None = "utf-8") -> H2:
    """An HTTP/2 client that sends header fields as given, as no client library would."""
    client = H2(target)
    client.conn.config = h2.config.H2Configuration(client_side=True, header_encoding=header_encoding,
                                                   validate_outbound_headers=False,
                                                   normalize_outbound_headers=False)
    return client


def h2_exchange(target: Target, method: str, path: str, authority: str = "localhost",
                extra: tuple = ()) -> tuple[int, dict, bytes] | None:
    """One request with pseudo-headers a client library would refuse to send; (status, headers,
    body), or None when the stream or the connection was reset instead."""
    client = lax_h2(target)
    try:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(":method", method), (":path", path), (":scheme", "https"),
                                       (":authority", authority), *extra], end_stream=True)
        client.flush()
        ends = (h2.events.StreamReset, h2.events.ConnectionTerminated)
        client.read(lambda evs: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid
                                    or isinstance(e, ends) for e in evs))
        if not any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid
                   for e in client.events):
            return None
        return client.response(sid)
    finally:
        client.close()


H2_REFUSED = [
    ("h2-request-line-in-method", "GET /app/admin", "/app/x?q=\x01", "localhost", "invalid_method"),
    ("h2-space-in-method", "GET /app/admin", "/app/x", "localhost", "invalid_method"),
    ("h2-vertical-tab-in-method", "GET\x0b/app/admin", "/app/x", "localhost", "invalid_method"),
    ("h2-control-character-in-method", "G\x01ET", "/app/x", "localhost", "invalid_method"),
    ("h2-control-character-in-query", "GET", "/app/x?q=\x01", "localhost", "invalid_query"),
    ("h2-request-line-in-query", "GET", "/app/x?q=a HTTP/1.1\tb c", "localhost", "invalid_query"),
    ("h2-escape-sequence-in-query", "GET", "/app/x?q=\x1b[31m\x7f", "localhost", "invalid_query"),
    ("h2-fragment-in-query", "GET", "/app/x?q=a#b", "localhost", "invalid_query"),
    ("h2-space-in-path", "GET", "/app/x /app/admin", "localhost", "invalid_path"),
    ("h2-comma-in-authority", "GET", "/app/x", "admin.example.com,x", "invalid_host"),
    ("h2-space-in-authority", "GET", "/app/x", "admin.example.com x", "invalid_host"),
]


@pytest.mark.parametrize("method, path, authority, error", [c[1:] for c in H2_REFUSED],
                         ids=[c[0] for c in H2_REFUSED])
def test_http2_pseudo_header_that_is_not_http_is_refused_and_never_forwarded(mesh, method, path,
                                                                            authority, error):
    """What HTTP/1's request line cannot carry, HTTP/2's pseudo-headers can: the same checks."""
    target = mesh.targets["gateway-tls"]
    before = target.hits()
    answer = h2_exchange(target, method, path, authority)
    assert answer is not None, "the stream was reset instead of answered"
    status, headers, body = answer
    assert status == 400 and headers["content-type"] == "application/json", (status, body)
    assert f'"error": "{error}"'.encode() in body and b"mitmproxy" not in body.lower(), body
    assert target.hits() == before, "the request reached the app"


def test_http2_trailing_dot_authority_gets_the_route_of_its_name(mesh):
    target = mesh.targets["gateway-tls"]
    before = target.hits()
    status, _, body = h2_exchange(target, "GET", "/shop/public/x", "admin.example.com.")
    assert status == 401 and b"missing_credentials" in body, body
    assert target.hits() == before
    status, _, body = h2_exchange(target, "GET", "/app/x", "shop.example.com.:443")
    assert status == 200 and b'["host", "shop.example.com:443"]' in body, body


def test_http2_authority_mitmproxy_cannot_parse_is_answered_on_its_stream(mesh):
    """mitmproxy ended the whole connection (GOAWAY with its own words, every other stream lost);
    the stream now gets the JSON 400 and the connection serves on."""
    client = lax_h2(mesh.targets["gateway-tls"])
    try:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(":method", "GET"), (":path", "/app/x"),
                                       (":scheme", "https"), (":authority", "admin.example.com,x")],
                                 end_stream=True)
        client.flush()
        status, _, body = client.response(sid)
        assert status == 400 and b"invalid_host" in body and b"mitmproxy" not in body.lower()
        status, _, _ = client.response(client.headers("/app/x"))
        assert status == 200
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
    finally:
        client.close()


@pytest.mark.parametrize("rest", ["data-ends-the-stream", "reset"])
def test_http2_unparsable_head_with_the_rest_of_its_stream_in_one_read_keeps_the_connection(mesh,
                                                                                            rest):
    """The same head, with its stream's end (a DATA frame with END_STREAM, or the client's
    RST_STREAM) in the same read: the stream is closed by the time its head is refused. Before,
    refusing it reset (or answered) a closed stream, the h2 library raised, and mitmproxy ended
    the connection with every other stream on it ('has crashed' and a traceback in the log)."""
    log = mesh.children["gateway"].log
    crashes = log.read_text().count("has crashed")
    client = lax_h2(mesh.targets["gateway-tls"])
    try:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(":method", "POST"), (":path", "/app/x"),
                                       (":scheme", "https"), (":authority", "admin.example.com,x")])
        if rest == "reset":
            client.conn.reset_stream(sid)
        else:
            client.conn.send_data(sid, b"x", end_stream=True)
        client.flush()  # one write: the server reads both frames at once
        if rest != "reset":
            status, _, body = client.response(sid)
            assert status == 400 and b"invalid_host" in body, body
        status, _, _ = client.response(client.headers("/app/x"))
        assert status == 200
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
    finally:
        client.close()
    time.sleep(0.2)
    assert log.read_text().count("has crashed") == crashes


# (a CR or LF in a field value never gets this far: the h2 library refuses the stream itself)
@pytest.mark.parametrize("scheme", [b"\xff", b"ftp\x1b[8m", b"ftp\x08\x08\x08web"])
def test_http2_client_bytes_in_a_refusal_are_logged_escaped(mesh, scheme):
    """mitmproxy's message for a refused head quotes the client (`Invalid request scheme: …`);
    logged as it came, a byte that is no UTF-8 made the log file unreadable as text, and a
    control character could hide or rewrite what a terminal shows. The log line shows them
    escaped."""
    log = mesh.children["gateway"].log
    size = log.stat().st_size
    client = lax_h2(mesh.targets["gateway-tls"], header_encoding=None)
    try:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(b":method", b"GET"), (b":path", b"/app/x"),
                                       (b":scheme", scheme), (b":authority", b"localhost")],
                                 end_stream=True)
        client.flush()
        client.read(lambda evs: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset,
                                                   h2.events.ConnectionTerminated)) for e in evs))
    finally:
        client.close()
    time.sleep(0.2)
    with open(log, "rb") as f:
        f.seek(size)
        written = f.read()
    text = written.decode("utf-8")  # raises on a byte that is no UTF-8
    assert "scheme" in text, text
    assert not any(c in text for c in "\x1b\x08"), text
