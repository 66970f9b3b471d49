"""Path normalization (RFC 3986 §6) and the escaped-slash actions, as a table of spellings."""

from __future__ import annotations

import pytest

from mesh.core import paths
from mesh.core.paths import (
    KEEP_UNCHANGED,
    REJECT_REQUEST,
    UNESCAPE_AND_FORWARD,
    UNESCAPE_AND_REDIRECT,
    Redirect,
    Rejected,
    normalize,
)


@pytest.mark.parametrize("raw, expected", [
    ("/a/b", "/a/b"),
    ("/", "/"),
    ("*", "*"),
    ("/.well-known/x", "/.well-known/x"),
    ("/a/../admin", "/admin"),
    ("/a/./b", "/a/b"),
    ("/../../etc", "/etc"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/.b/..c", "/a/.b/..c"),
    ("/%61dmin", "/admin"),
    ("/%41%42%7e%2D%2e%5f", "/AB~-._"),
    ("/a%2e%2e/x", "/a../x"),
    ("/a/%2e%2e/admin", "/admin"),
    ("/a/.%2E/admin", "/admin"),
    ("/a%3fb%3Dc", "/a%3Fb%3Dc"),  # reserved: kept encoded, in upper case
    ("/%252e%252e/x", "/%252e%252e/x"),  # one decoding step only: %25 stays data
    ("/caf%C3%A9", "/caf%C3%A9"),
    ("/a//b///c", "/a/b/c"),
    ("//a", "/a"),
    ("/a\\b\\..\\c", "/a/c"),
    ("/a/b/../../../..", "/"),
])
def test_normalized_spellings(raw, expected):
    assert normalize(raw) == expected
    assert normalize(expected) == expected  # idempotent: normalizing twice changes nothing


@pytest.mark.parametrize("raw, error, reason", [
    ("/a\x00b", "invalid_path", "the path holds the control character '\\x00', which a request target "
                                "may not contain (RFC 9112 §3.2)"),
    ("/a b", "invalid_path", "the path holds a space, which a request target may not contain (RFC 9112 §3.2)"),
    ("/a#b", "invalid_path", "the path holds '#' (a fragment), which a request target may not contain "
                             "(RFC 9112 §3.2)"),
    ("/a%00", "invalid_path", "the path holds an encoded NUL (%00)"),
    # bytes that are no UTF-8 (mitmproxy decodes the target with surrogateescape): an overlong '/'
    ("/app\udcc0\udcafadmin", "invalid_path",
     "the path holds the byte 0xC0, no UTF-8 (percent-encode it), which a request target may not "
     "contain (RFC 9112 §3.2)"),
    ("/a/b\udcff", "invalid_path",
     "the path holds the byte 0xFF, no UTF-8 (percent-encode it), which a request target may not "
     "contain (RFC 9112 §3.2)"),
    ("/a%zz", "invalid_path", "malformed percent-encoding '%zz' in the path (RFC 3986 §2.1)"),
    ("/a%2", "invalid_path", "malformed percent-encoding '%2' in the path (RFC 3986 §2.1)"),
    ("/a%", "invalid_path", "malformed percent-encoding '%' in the path (RFC 3986 §2.1)"),
    ("a/b", "invalid_path", "the path must start with '/' (origin form, RFC 9112 §3.2.1)"),
    ("/a%2Fb", "escaped_slash_in_path",
     "the path holds an encoded slash (%2F), which proxy and upstream could read differently"),
    ("/a%5cb", "escaped_slash_in_path",
     "the path holds an encoded backslash (%5c), which proxy and upstream could read differently"),
])
def test_refused_spellings(raw, error, reason):
    with pytest.raises(Rejected) as e:
        normalize(raw)
    assert (e.value.status, e.value.error, e.value.reason) == (400, error, reason)


@pytest.mark.parametrize("query, shown", [
    ("q=\x01", "the control character '\\x01'"),
    ("q=a HTTP/1.1\tb c", "a space"),  # a request line of its own, upstream
    ("q=\x1b[31m", "the control character '\\x1b'"),
    ("q=a\x7f", "the control character '\\x7f'"),
    ("q=a\x00", "the control character '\\x00'"),
    ("q=a#/admin", "'#' (a fragment)"),
    ("q=caf\udce9", "the byte 0xE9, no UTF-8 (percent-encode it)"),  # café in Latin-1
])
def test_refused_queries(query, shown):
    with pytest.raises(Rejected) as e:
        paths.check_query(query)
    assert (e.value.status, e.value.error, e.value.reason) == (
        400, "invalid_query",
        f"the query holds {shown}, which a request target may not contain (RFC 9112 §3.2)")


@pytest.mark.parametrize("query", ["", "q=a%20b&r=%23", "a=b;c=d", "q=/a/../b?c", "q=caf\u00e9",
                                   "a+b=c"])
def test_queries_that_a_request_line_can_carry_pass(query):
    paths.check_query(query)


@pytest.mark.parametrize("raw", ["/caf\u00e9", "/a/\u2603/b", "/%C3%A9"])
def test_utf8_paths_pass(raw):
    """UTF-8 in a path is kept as it came (the upstream gets the same bytes); only bytes that are no
    UTF-8 are refused."""
    assert normalize(raw) == raw


@pytest.mark.parametrize("action, raw, expected", [
    (KEEP_UNCHANGED, "/a%2fb/../c", "/c"),  # an escaped slash is data: the dot-dot removes the segment
    (KEEP_UNCHANGED, "/a%2fb", "/a%2Fb"),
    (KEEP_UNCHANGED, "/a%5Cb", "/a%5Cb"),
    (UNESCAPE_AND_FORWARD, "/a%2Fb", "/a/b"),
    (UNESCAPE_AND_FORWARD, "/a%5Cb", "/a/b"),
    (UNESCAPE_AND_FORWARD, "/app%2F..%2Fadmin", "/admin"),
])
def test_escaped_slash_actions(action, raw, expected):
    assert normalize(raw, escaped_slashes=action) == expected


def test_unescape_and_redirect_names_the_unescaped_path():
    with pytest.raises(Redirect) as e:
        normalize("/a%2F%2Fb", escaped_slashes=UNESCAPE_AND_REDIRECT)
    assert e.value.path == "/a/b"
    assert normalize("/a/b", escaped_slashes=UNESCAPE_AND_REDIRECT) == "/a/b"  # nothing escaped: no redirect


def test_options_off_keep_the_spelling_but_not_the_refusals():
    assert normalize("/a/./%61//b", normalize_path=False, merge_slashes=False) == "/a/./%61//b"
    assert normalize("/a/./%61//b", normalize_path=False) == "/a/./%61/b"
    assert normalize("/a//b", merge_slashes=False) == "/a//b"
    for raw in ("/a%00", "/a%2Fb", "/a\x01"):
        with pytest.raises(Rejected):
            normalize(raw, normalize_path=False, merge_slashes=False, escaped_slashes=REJECT_REQUEST)


def test_common_paths_come_back_as_they_came():
    raw = "/catalog/items/1"
    assert normalize(raw) is raw  # the fast path: no copy, no work
    assert paths.remove_dot_segments(raw) is raw
