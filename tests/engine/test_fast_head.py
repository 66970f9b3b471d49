"""`engine: fast` in process: the config switch reaches every connection's HTTP layer, and the heads
FastHttp1Server takes become the same mitmproxy `Request` as mitmproxy's own parser makes, while
everything it does not take plainly is left to that parser."""

from __future__ import annotations

import pytest
from mitmproxy import options
from mitmproxy.net.http import http1
from mitmproxy.proxy import events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.test import tflow

from addons.httplayer import FastHttp1Server, GuardedHttp1Server, GuardedHttpLayer, Limits
from mesh.config import ConfigError, load_text

from ..engine.test_differential import CORPUS


def server(data: bytes, max_head: int = 128 << 10) -> FastHttp1Server:
    srv = FastHttp1Server(Context(tflow.tclient_conn(), options.Options()))
    srv.limits = Limits(max_head, 100, 10.0, fast=True)
    srv.buf += data
    return srv


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_head_taken_is_the_request_mitmproxy_would_make(name):
    srv = server(CORPUS[name])
    ours = srv._fast_head()
    if ours is None:  # left to mitmproxy's parser, untouched
        assert bytes(srv.buf) == CORPUS[name]
        return
    lines = [bytes(x) for x in server(CORPUS[name]).buf.maybe_extract_lines()]
    theirs = http1.read_request_head(lines)
    ours.timestamp_start = theirs.timestamp_start
    assert ours.data == theirs.data
    assert bytes(srv.buf) == CORPUS[name][len(srv._head):]  # the body (or next request) stays


def test_what_the_fast_parser_takes_and_leaves():
    taken = {name for name in CORPUS if server(CORPUS[name])._fast_head() is not None}
    # Expect and a missing Host are taken: mitmproxy's HttpStream (unchanged) handles them after the head
    assert taken == {"get", "post", "keepalive-two", "pipelined-post", "head", "http10", "repeated-headers",
                     "denied", "no-route-policy", "split-head", "expect-continue", "no-host", "short-body"}, sorted(taken)


def test_a_head_over_the_cap_is_left_to_the_standard_checks():
    assert server(CORPUS["get"], max_head=20)._fast_head() is None


def test_config_switch_reaches_the_connection():
    ctx = Context(tflow.tclient_conn(), options.Options())
    for fast, kind in ((True, FastHttp1Server), (False, GuardedHttp1Server)):
        layer = GuardedHttpLayer(ctx, HTTPMode.regular)
        layer.limits = Limits(128 << 10, 100, 10.0, fast=fast)
        list(layer.handle_event(events.Start()))
        assert type(layer.connections[ctx.client]) is kind


def test_engine_option_is_validated(tmp_path):
    base = "version: 1\ngateway:\n  listeners: [{name: public, port: 18080}]\n  engine: %s\n"
    assert load_text(base % "fast", "m.yaml").gateway.engine == "fast"
    assert load_text(base % "standard", "m.yaml").sidecar.engine == "standard"
    with pytest.raises(ConfigError, match="engine"):
        load_text(base % "turbo", "m.yaml")
