"""Route table: first match wins, host specificity, path index, header/query/method matchers, rewrites."""

from __future__ import annotations

import collections

import pytest

from mesh.config import load_text
from mesh.core.routing import ForwardAction, compile_routes, strip_port
from tests.conftest import dedent

HEAD = """
version: 1
gateway: {listeners: [{name: public, port: 18080}]}
services:
  a: {versions: {v1: {endpoints: ["127.0.0.1:1"]}, v2: {endpoints: ["127.0.0.1:2"]}}}
routes:
"""


def table(routes: str):
    return compile_routes(load_text(dedent(HEAD) + dedent(routes), "t.yaml"))


def match(t, path, *, host="example.com", method="GET", headers=None, query=None):
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    route = t.match(host, path, method, headers.get, lambda: query or {})
    return route.name if route else None


def test_exact_prefix_regex_and_first_match_wins():
    t = table("""
    - {name: exact, match: {path: {exact: /a/b}}, direct: {}}
    - {name: longer, match: {path: {prefix: /a/b}}, direct: {}}
    - {name: prefix, match: {path: {prefix: /a}}, direct: {}}
    - {name: regex, match: {path: {regex: '/r/[0-9]+'}}, direct: {}}
    - {name: any, direct: {}}
    """)
    assert match(t, "/a/b") == "exact"
    assert match(t, "/a/bc") == "longer"
    assert match(t, "/a/x") == "prefix"
    assert match(t, "/r/12") == "regex"
    assert match(t, "/r/12x") == "any"  # regex must match the whole path
    assert match(t, "/") == "any"


def test_declaration_order_beats_specificity():
    t = table("""
    - {name: broad, match: {path: {prefix: /}}, direct: {}}
    - {name: narrow, match: {path: {exact: /x}}, direct: {}}
    """)
    assert match(t, "/x") == "broad"


def test_hosts_exact_wildcard_any_with_fallback():
    t = table("""
    - {name: api, match: {host: api.example.com, path: {prefix: /v1}}, direct: {}}
    - {name: wild, match: {host: "*.example.com"}, direct: {}}
    - {name: other, match: {host: [foo.test, bar.test]}, direct: {}}
    - {name: fallback, match: {path: {prefix: /}}, direct: {}}
    """)
    assert match(t, "/v1/x", host="API.example.com:8443") == "api"
    assert match(t, "/v2", host="api.example.com") == "wild"
    assert match(t, "/v2", host="www.example.com") == "wild"
    assert match(t, "/", host="bar.test") == "other"
    assert match(t, "/", host="example.org") == "fallback"


def test_host_with_the_roots_trailing_dot_gets_the_route_of_its_name():
    """`admin.example.com.` is the same DNS name: it once fell through to the host-agnostic route,
    and an upstream that strips the dot (nginx) served its admin virtual host."""
    t = table("""
    - {name: admin, match: {host: admin.example.com}, direct: {}}
    - {name: wild, match: {host: "*.example.com"}, direct: {}}
    - {name: fallback, match: {path: {prefix: /}}, direct: {}}
    """)
    for host in ("admin.example.com.", "Admin.Example.Com.", "admin.example.com.:80"):
        assert match(t, "/shop/", host=host) == "admin", host
    assert match(t, "/shop/", host="www.example.com.") == "wild"
    assert match(t, "/shop/", host="example.com.") == "fallback"


def test_methods_headers_query():
    t = table("""
    - name: canary
      match:
        headers: {x-canary: always, x-user: {prefix: "test-"}, x-debug: {present: false}}
      direct: {}
    - {name: post, match: {methods: [post]}, direct: {}}
    - {name: q, match: {query: {v: {regex: "[12]"}, flag: {present: true}}}, direct: {}}
    """)
    assert match(t, "/", headers={"X-Canary": "always", "x-user": "test-1"}) == "canary"
    assert match(t, "/", headers={"X-Canary": "always", "x-user": "test-1", "x-debug": "1"}) is None
    assert match(t, "/", headers={"X-Canary": "never", "x-user": "test-1"}) is None
    assert match(t, "/", method="POST") == "post"
    assert match(t, "/", query={"v": "2", "flag": ""}) == "q"
    assert match(t, "/", query={"v": "3", "flag": ""}) is None


def test_rewrites():
    t = table("""
    - name: strip
      match: {path: {prefix: /api/}}
      forward: {service: a, rewrite: {prefix: /}}
    - name: re
      match: {path: {prefix: /u/}}
      forward: {service: a, rewrite: {regex: "^/u/([^/]+)/(.*)$", substitution: "/users/\\\\1/\\\\2"}}
    """)
    strip = t.match("h", "/api/items", "GET", {}.get, dict)
    assert strip.action.rewrite("/api/items") == "/items"
    assert strip.action.rewrite("/api/") == "/"
    re_route = t.match("h", "/u/7/orders", "GET", {}.get, dict)
    assert re_route.action.rewrite("/u/7/orders") == "/users/7/orders"


def test_weighted_split():
    t = table("""
    - {name: w, forward: {service: a, weights: {v1: 90, v2: 10}}}
    """)
    action = t.routes[0].action
    assert isinstance(action, ForwardAction)
    counts = collections.Counter(action.pick_cluster() for _ in range(20_000))
    assert abs(counts["a/v2"] / 20_000 - 0.10) < 0.01
    assert action.pick_cluster(0.0) == "a/v1" and action.pick_cluster(0.95) == "a/v2"


def test_ten_thousand_routes_are_indexed():
    rows = "\n".join(f"- {{name: r{i}, match: {{path: {{prefix: /svc{i}/}}}}, direct: {{}}}}"
                     for i in range(10_000))
    t = table(rows)
    calls = 0
    original = type(t.routes[0]).matches

    def counting(self, *a):
        nonlocal calls
        calls += 1
        return original(self, *a)

    type(t.routes[0]).matches = counting
    try:
        assert match(t, "/svc9999/x") == "r9999"
        assert match(t, "/nothing") is None
    finally:
        type(t.routes[0]).matches = original
    assert calls <= 2  # one candidate tested, not ten thousand


def test_strip_port():
    assert strip_port("Example.com:8080") == "example.com"
    assert strip_port("[::1]:8080") == "[::1]"
    assert strip_port("example.com") == "example.com"
    assert strip_port("Admin.Example.Com.") == "admin.example.com"  # the root's dot: the same name
    assert strip_port("admin.example.com.:80") == "admin.example.com"
    assert strip_port("[::1]") == "[::1]"
