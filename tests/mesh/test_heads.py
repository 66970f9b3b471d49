"""Request head checks: a table of heads and the exact refusal each gets (or none)."""

from __future__ import annotations

import pytest

from mesh.core.heads import check, fold, underscores, without_root_dot
from mesh.core.paths import Rejected

HOST = (b"Host", b"example.com")


@pytest.mark.parametrize("version, fields, h2", [
    ("HTTP/1.1", [HOST], False),
    ("HTTP/1.0", [], False),
    ("HTTP/1.1", [HOST, (b"X-A", b"a\tb"), (b"X-B", b"caf\xc3\xa9")], False),
    ("HTTP/1.1", [(b"Host", b"[::1]:8080")], False),
    ("HTTP/1.1", [(b"Host", b"127.0.0.1:80")], False),
    ("HTTP/1.1", [HOST, (b"Transfer-Encoding", b"gzip, chunked")], False),
    ("HTTP/1.1", [HOST, (b"Content-Length", b"12")], False),
    ("HTTP/2.0", [(b"content-length", b"3")], True),
])
def test_good_heads_pass(version, fields, h2):
    check(version, b"GET", fields, h2)


@pytest.mark.parametrize("version, fields, h2, status, error, reason", [
    ("HTTP/1.2", [HOST], False, 400, "bad_http_version",
     "unknown HTTP version 'HTTP/1.2': HTTP/1.0 and HTTP/1.1 are accepted"),
    ("HTTP/2.0", [HOST], False, 505, "http_version_not_supported",
     "HTTP version 'HTTP/2.0' is not spoken here (RFC 9110 §15.6.6)"),
    ("HTTP/1.1", [HOST], True, 400, "bad_http_version", "HTTP/1.1 request on an HTTP/2 connection"),
    ("HTTP/1.1", [HOST, (b"X A", b"b")], False, 400, "invalid_header",
     "invalid header name 'X A' (RFC 9110 §5.1)"),
    ("HTTP/1.1", [HOST, (b"X-A", b"a\x00b")], False, 400, "invalid_header",
     "header 'X-A' holds the control character b'\\x00' (RFC 9110 §5.5)"),
    ("HTTP/1.1", [HOST, (b"X-A", b"a\rx-user: admin")], False, 400, "invalid_header",
     "header 'X-A' holds the control character b'\\r' (RFC 9110 §5.5)"),
    ("HTTP/1.1", [HOST, (b"X-A", b"a\r\n x-user: admin")], False, 400, "invalid_header",
     "header 'X-A' holds a folded line (obs-fold, RFC 9112 §5.2)"),
    ("HTTP/1.1", [HOST, (b"X-A", b"a\x7f")], False, 400, "invalid_header",
     "header 'X-A' holds the control character b'\\x7f' (RFC 9110 §5.5)"),
    ("HTTP/1.1", [HOST, HOST], False, 400, "invalid_host", "2 Host header fields (RFC 9112 §3.2)"),
    ("HTTP/1.1", [], False, 400, "invalid_host", "an HTTP/1.1 request without a Host header field (RFC 9112 §3.2)"),
    ("HTTP/1.1", [(b"Host", b"a/b")], False, 400, "invalid_host", "invalid Host 'a/b' (RFC 9110 §7.2)"),
    ("HTTP/1.1", [HOST, (b"Content-Length", b"-1")], False, 400, "invalid_framing",
     "invalid Content-Length '-1' (RFC 9110 §8.6)"),
    ("HTTP/1.1", [HOST, (b"Content-Length", b"1"), (b"Content-Length", b"1")], False, 400, "invalid_framing",
     "more than one Content-Length (RFC 9112 §6.3)"),
    ("HTTP/1.1", [HOST, (b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")], False, 400,
     "invalid_framing", "both Content-Length and Transfer-Encoding (RFC 9112 §6.1)"),
    ("HTTP/1.0", [(b"Transfer-Encoding", b"chunked")], False, 400, "invalid_framing",
     "Transfer-Encoding repeated or on HTTP/1.0 (RFC 9112 §6.1)"),
    ("HTTP/1.1", [HOST, (b"Transfer-Encoding", b"chunked, gzip")], False, 400, "invalid_framing",
     "Transfer-Encoding 'chunked, gzip' does not end in a single chunked (RFC 9112 §6.1)"),
    ("HTTP/1.1", [HOST, (b"Transfer-Encoding", b"chunked, chunked")], False, 400, "invalid_framing",
     "Transfer-Encoding 'chunked, chunked' does not end in a single chunked (RFC 9112 §6.1)"),
    ("HTTP/2.0", [(b"transfer-encoding", b"chunked")], True, 400, "invalid_framing",
     "Transfer-Encoding on HTTP/2 (RFC 9113 §8.2.2)"),
    ("HTTP/1.1", [HOST, (b"Connection", b"close, x-forwarded-for")], False, 400, "invalid_header",
     "Connection nominates 'x-forwarded-for', which the proxy does not remove (RFC 9110 §7.6.1)"),
])
def test_bad_heads_are_refused(version, fields, h2, status, error, reason):
    with pytest.raises(Rejected) as e:
        check(version, b"GET", fields, h2)
    assert (e.value.status, e.value.error, e.value.reason) == (status, error, reason)


def test_long_values_are_clipped_in_the_reason():
    with pytest.raises(Rejected) as e:
        check("HTTP/1.1", b"GET", [(b"Host", b"x" * 100 + b"/")])
    assert e.value.reason == f"invalid Host '{'x' * 40}…' (RFC 9110 §7.2)"


def test_fold_reads_a_name_as_a_cgi_upstream_does():
    assert fold(b"X_Authenticated_Userid") == fold(b"x-authenticated-userid") == b"x-authenticated-userid"


FIELDS = (HOST, (b"X_User", b"admin"), (b"x-user", b"alice"), (b"x_user", b"root"))


def test_underscores_dropped_allowed_or_refused():
    assert underscores(FIELDS, "DROP_HEADER") == ((HOST, (b"x-user", b"alice")), (b"X_User", b"x_user"))
    assert underscores(FIELDS, "ALLOW") == (FIELDS, ())
    assert underscores(FIELDS[:1], "REJECT_REQUEST") == (FIELDS[:1], ())
    with pytest.raises(Rejected) as e:
        underscores(FIELDS, "REJECT_REQUEST")
    assert (e.value.status, e.value.error, e.value.reason) == (
        400, "invalid_header",
        "header name 'X_User' holds an underscore (headers_with_underscores_action: REJECT_REQUEST)")


@pytest.mark.parametrize("method", [b"GET", b"PURGE", b"M-SEARCH", b"VERSION-CONTROL",
                                    b"x~!#$%&'*+.^_`|"])
def test_token_methods_pass(method):
    check("HTTP/1.1", method, [HOST])


@pytest.mark.parametrize("method, shown", [
    (b"GET /app/admin", "'GET /app/admin'"),  # HTTP/2's :method: a request line of its own upstream
    (b"G\x01ET", "'G\\x01ET'"),
    (b"G\x0bET", "'G\\x0bET'"),
    (b"GET?", "'GET?'"),
    (b"GET/x", "'GET/x'"),
    (b"GET\tx", "'GET\\tx'"),
    (b"", "''"),
])
def test_methods_that_are_not_tokens_are_refused(method, shown):
    with pytest.raises(Rejected) as e:
        check("HTTP/2.0", method, [], True)
    assert (e.value.status, e.value.error) == (400, "invalid_method")
    assert e.value.reason == f"the method {shown} is not a token (RFC 9110 §9.1)"


@pytest.mark.parametrize("host", [
    b"example.com", b"Example.COM:8080", b"admin.example.com.", b"admin.example.com.:80",
    b"localhost", b"my_service.internal", b"xn--bcher-kva.example", b"a-b.c-d",
    b"127.0.0.1", b"127.0.0.1:80",
    b"[::1]", b"[::1]:8080", b"[2001:db8::ffff:192.0.2.1]:443", b"example.com:", b"",
])
def test_hosts_that_name_a_host_pass(host):
    check("HTTP/1.1", b"GET", [(b"Host", host)])
    check("HTTP/2.0", b"GET", [], True, authority=host)


@pytest.mark.parametrize("host", [
    b"admin.example.com,x", b"admin.example.com;x", b"a=b", b"a!b", b"a$b", b"a&b", b"a'b", b"a(b)",
    b"a*b", b"a+b", b"admin%2eexample.com", b"a~b", b"admin..example.com", b"admin.example.com..",
    b".example.com", b".", b":80", b"a b", b"a/b", b"user@x", b"[::1", b"::1", b"x:80:80", b"x:8a",
    b"[::1].", b"caf\xc3\xa9.example",
])
def test_hosts_that_are_not_hosts_are_refused(host):
    with pytest.raises(Rejected) as e:
        check("HTTP/1.1", b"GET", [(b"Host", host)])
    assert (e.value.status, e.value.error) == (400, "invalid_host")
    with pytest.raises(Rejected) as e:
        check("HTTP/2.0", b"GET", [], True, authority=host)
    assert e.value.reason.startswith("invalid authority ")


@pytest.mark.parametrize("host, named", [
    ("admin.example.com.", "admin.example.com"),
    ("admin.example.com.:8080", "admin.example.com:8080"),
    ("Admin.Example.Com.", "Admin.Example.Com"),  # matching is case-blind; the name keeps its case
    ("admin.example.com", "admin.example.com"),
    ("admin.example.com:8080", "admin.example.com:8080"),
    ("127.0.0.1.", "127.0.0.1"),
    ("[::1]:8080", "[::1]:8080"),
])
def test_without_root_dot(host, named):
    assert without_root_dot(host) == named

