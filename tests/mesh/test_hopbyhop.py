"""What a received request's Connection field nominates: removed, kept, or refused as Envoy does."""

from __future__ import annotations

import pytest

from mesh.core import hopbyhop

HOST = (b"Host", b"x")


@pytest.mark.parametrize("fields, expected", [
    ([HOST], None),
    ([HOST, (b"Connection", b"close")], None),
    ([HOST, (b"Connection", b"Keep-Alive, Upgrade"), (b"Upgrade", b"websocket")], None),
    # the fixed hop-by-hop set is removed when forwarding; mitmproxy reads Upgrade and framing
    ([HOST, (b"Connection", b"te, trailer"), (b"TE", b"trailers")], None),
    # a nomination refused: left as it came, for heads.check to answer
    ([HOST, (b"Connection", b"x-forwarded-for"), (b"X-Forwarded-For", b"1.2.3.4")], None),
])
def test_nothing_to_strip(fields, expected):
    assert hopbyhop.strip(fields) is expected


def test_nominated_fields_go_and_their_tokens_leave_connection():
    fields = [HOST, (b"Connection", b"close, X-Authenticated-Userid,x-consumer"),
              (b"x-authenticated-userid", b"admin"), (b"X-Consumer", b"bigcorp"), (b"X-Consumer", b"2"),
              (b"Accept", b"*/*")]
    out = hopbyhop.strip(fields)
    assert out.fields == (HOST, (b"Connection", b"close"), (b"Accept", b"*/*"))
    assert out.removed == ("x-authenticated-userid", "x-consumer") and out.kept == ()


def test_a_connection_of_nominations_only_goes_whole():
    out = hopbyhop.strip([HOST, (b"Connection", b"x-request-id"), (b"Connection", b" , x-a "),
                          (b"X-Request-Id", b"forged")])
    assert out.fields == (HOST,)
    assert out.removed == ("x-a", "x-request-id")  # named whether or not the field was sent


def test_what_the_proxy_routes_and_frames_by_is_kept_and_said():
    fields = [HOST, (b"Content-Length", b"2"), (b"Connection", b"Host, content-length, x-a"), (b"x-a", b"1")]
    out = hopbyhop.strip(fields)
    assert out.fields == (HOST, (b"Content-Length", b"2"), (b"Connection", b"Host, content-length"))
    assert out.removed == ("x-a",) and out.kept == ("host", "content-length")
    only = hopbyhop.strip([HOST, (b"Connection", b"host")])
    assert only.fields == (HOST, (b"Connection", b"host")) and only.removed == () and only.kept == ("host",)


@pytest.mark.parametrize("values, reason", [
    ([b"close, X-Forwarded-For"], "Connection nominates 'x-forwarded-for', which the proxy does not remove "
                                  "(RFC 9110 §7.6.1)"),
    ([b"x-forwarded-host"], "Connection nominates 'x-forwarded-host', which the proxy does not remove "
                            "(RFC 9110 §7.6.1)"),
    ([b"x-a", b"X-Forwarded-Proto"], "Connection nominates 'x-forwarded-proto', which the proxy does not "
                                     "remove (RFC 9110 §7.6.1)"),
    ([b":authority"], "Connection nominates ':authority', which the proxy does not remove (RFC 9110 §7.6.1)"),
    ([b",".join(b"x-%d" % i for i in range(10))], "a Connection header of 10 tokens (at most 9)"),
])
def test_refusals_are_envoys(values, reason):
    assert hopbyhop.refusal(hopbyhop.tokens(values)) == reason


def test_nine_tokens_pass():
    assert hopbyhop.refusal(hopbyhop.tokens([b",".join(b"x-%d" % i for i in range(9))])) is None
