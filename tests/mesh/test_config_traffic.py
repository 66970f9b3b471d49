"""Schema of the traffic policies (transform, versioning, mirror, sticky split, cookie match): every
mistake is an error with its file, line, key path and what was expected."""

from __future__ import annotations

import textwrap

import pytest

from mesh.config import ConfigError, load, load_text
from tests.conftest import dedent

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]

HEAD = """\
version: 1
gateway: {listeners: [{name: public, port: 18080}]}
services:
  catalog: {versions: {v1: {endpoints: ["127.0.0.1:1"]}, v2: {endpoints: ["127.0.0.1:2"]}}}
routes:
  - name: api
    match: {path: {prefix: /api/}}
    forward: {service: catalog}
    policies: [p]
policies:
  p:
"""


def errors(policy: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(HEAD + textwrap.indent(dedent(policy), "    "), "mesh.yaml")
    return [str(p) for p in e.value.problems]


TRANSFORM = [
    ("""
        transform:
          request:
            add: {headers: {x-user: "$(claim.sub)"}}
     """, "mesh.yaml:14: policies.p.transform.request.add.headers.x-user: invalid template: unknown source "
          "'claim'; expected $(headers.NAME), $(query.NAME), $(path.NAME) or $(claims.NAME) (got '$(claim.sub)')"),
    ("""
        transform:
          request:
            set:
              body: {who: {name: "$(claims.sub"}}
     """, "mesh.yaml:15: policies.p.transform.request.set.body.who: invalid template: '$(' is not closed "
          "(got '$(claims.sub')"),
    ("""
        transform:
          request:
            remove: {headers: ["x user"]}
     """, "mesh.yaml:14: policies.p.transform.request.remove.headers[0]: expected an HTTP header name "
          "(letters, digits, '-', ...) (got 'x user')"),
    ("""
        transform:
          request:
            rename:
              body: {"a..b": c}
     """, "mesh.yaml:15: policies.p.transform.request.rename.body.a..b: key 'a..b': expected a JSON field name, "
          "dotted for nested fields (got 'a..b')"),
    ("""
        transform:
          response:
            remove: {query: [page]}
     """, "mesh.yaml:14: policies.p.transform.response.remove.query: unknown key; expected one of headers, body "
          "(got 'query')"),
    ("""
        transform:
          request:
            prepend: {headers: {x-a: b}}
     """, "mesh.yaml:14: policies.p.transform.request.prepend: unknown key; expected one of remove, rename, "
          "replace, set, add, append, path (got 'prepend')"),
    ("""
        transform:
          request:
            path: {strip_prefix: /api, set: /x}
     """, "mesh.yaml:14: policies.p.transform.request.path: expected exactly one of strip_prefix, regex, set "
          "(got strip_prefix, set)"),
    ("""
        transform:
          request:
            path: {regex: '^/api/(.*)'}
     """, "mesh.yaml:14: policies.p.transform.request.path: regex and substitution go together"),
    ("""
        transform:
          request:
            path: {regex: '^/api/(', substitution: x}
     """, "mesh.yaml:14: policies.p.transform.request.path.regex: invalid regular expression: missing ), "
          "unterminated subpattern at position 6 (got '^/api/(')"),
    ("""
        transform:
          request:
            path: {set: "users/$(path.id)"}
     """, "mesh.yaml:14: policies.p.transform.request.path: set: expected a path starting with '/' "
          "(got 'users/$(path.id)')"),
    ("""
        transform:
          max_body: -1
     """, "mesh.yaml:13: policies.p.transform.max_body: expected a value >= 0 (got -1)"),
]

VERSIONING = [
    ("""
        versioning:
          versions: {v1: {}, v2: {successor: v3}}
     """, "mesh.yaml:13: policies.p.versioning.versions.v2.successor: unknown version; expected one of v1, v2 "
          "(got 'v3')"),
    ("""
        versioning:
          default: v0
          versions: {v1: {}}
     """, "mesh.yaml:13: policies.p.versioning.default: unknown version; expected one of v1 (got 'v0')"),
    ("""
        versioning:
          versions: {v1: {}, v3: {}}
     """, "mesh.yaml:13: policies.p.versioning.versions.v3: unknown version of catalog (for route 'api'); "
          "expected one of v1, v2 (got 'v3')"),
    ("""
        versioning:
          versions: {v1: {version: v7}}
     """, "mesh.yaml:13: policies.p.versioning.versions.v1.version: unknown version of catalog (for route 'api'); "
          "expected one of v1, v2 (got 'v7')"),
    ("""
        versioning:
          sources: [path, cookie]
          versions: {v1: {}}
     """, "mesh.yaml:13: policies.p.versioning.sources[1]: expected one of 'path', 'header', 'media_type', "
          "'query' (got 'cookie')"),
    ("""
        versioning:
          versions: {v1: {sunset: someday}}
     """, "mesh.yaml:13: policies.p.versioning.versions.v1.sunset: expected a date such as 2027-06-30 "
          "(got 'someday')"),
    ("""
        versioning:
          versions: {v1: {deprecated: soon}}
     """, "mesh.yaml:13: policies.p.versioning.versions.v1.deprecated: expected true, false or a date such as "
          "2026-01-01 (got 'soon')"),
    ("""
        versioning:
          versions: {}
     """, "mesh.yaml:13: policies.p.versioning.versions: expected at least 1 item(s) (got {})"),
]

MIRROR = [
    ("""
        mirror: {service: catalog, version: v9}
     """, "mesh.yaml:12: policies.p.mirror.version: unknown version of catalog; expected one of v1, v2 (got 'v9')"),
    ("""
        mirror: {service: billing}
     """, "mesh.yaml:12: policies.p.mirror.service: unknown service; expected one of catalog (got 'billing')"),
    ("""
        mirror: {service: catalog, percent: 150}
     """, "mesh.yaml:12: policies.p.mirror.percent: expected a value <= 100 (got 150)"),
    ("""
        mirror: {service: catalog, ignore: [""]}
     """, "mesh.yaml:12: policies.p.mirror.ignore[0]: expected a JSON field name, dotted for nested fields "
          "(got '')"),
]


@pytest.mark.parametrize("policy, error", TRANSFORM + VERSIONING + MIRROR)
def test_policy_errors(policy, error):
    assert errors(policy) == [error]


@pytest.mark.parametrize("forward, error", [
    ("{service: catalog, weights: {v1: 90, v2: 10}, sticky: {cookie: uid, header: x-user}}",
     "mesh.yaml:8: routes[0].forward.sticky: expected exactly one of cookie, header, claim (got cookie, header)"),
    ("{service: catalog, weights: {v1: 90, v2: 10}, sticky: {header: x-user, ttl: 1h}}",
     "mesh.yaml:8: routes[0].forward.sticky: ttl needs cookie"),
    ("{service: catalog, sticky: {}}",
     "mesh.yaml:8: routes[0].forward.sticky: expected exactly one of cookie, header, claim (got none)"),
])
def test_sticky_errors(forward, error):
    text = HEAD.replace("forward: {service: catalog}", f"forward: {forward}").replace("    policies: [p]\n", "")
    with pytest.raises(ConfigError) as e:
        load_text(text.replace("policies:\n  p:\n", ""), "mesh.yaml")
    assert [str(p) for p in e.value.problems] == [error]


def test_cookie_match_errors():
    text = HEAD.replace("match: {path: {prefix: /api/}}", "match: {path: {prefix: /api/}, cookies: {g: {exact: a, "
                                                          "prefix: b}}}")
    with pytest.raises(ConfigError) as e:
        load_text(text.replace("    policies: [p]\n", "").replace("policies:\n  p:\n", ""), "mesh.yaml")
    assert [str(p) for p in e.value.problems] == [
        "mesh.yaml:7: routes[0].match.cookies.g: expected exactly one of exact, prefix, suffix, regex, present "
        "(got exact, prefix)"]


def test_the_demo_limits_every_public_route():
    """Every forwarding route of the demo is rate limited, but /load/: the one route load tools
    (`just load`) use, so they measure the proxy, not the limiter."""
    config = load(ROOT / "mesh.yaml")
    unlimited = [r.name for r in config.routes if r.forward is not None
                 and not any(config.policies[p].rate_limit for p in (*r.policies, *config.gateway.policies))]
    assert unlimited == ["load"]
