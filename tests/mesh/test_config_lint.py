"""Config warnings: a route that lets callers skip another route's authentication of the same
service is named with file and line; everything else stays quiet. `mitmesh validate` still exits 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh import cli
from mesh.config import load_text
from mesh.config.lint import warnings
from mesh.config.source import parse
from tests.conftest import dedent

ROOT = Path(__file__).resolve().parents[2]

HEAD = """
version: 1
gateway: {listeners: [{name: public, port: 18080}]}
services:
  users: {versions: {v1: {endpoints: ["127.0.0.1:19001"]}}}
  catalog: {versions: {v1: {endpoints: ["127.0.0.1:19002"]}}}
policies:
  jwt: {jwt: {issuer: "https://idp", jwks_uri: "https://idp/jwks"}}
  read: {require: {scopes: ["users:read"]}}
  admin: {require: {scopes: ["users:read", "users:admin"]}}
  keys: {api_key: {consumers: {acme: {key_sha256: "%s"}}}}
  orders-only: {authz: {allow: [{principals: ["td/ns/demo/sa/orders"]}]}}
  local-only: {authz: {allow: [{ip_blocks: ["127.0.0.0/8"]}]}}
routes:
""" % ("0" * 64)


def lint(routes: str) -> list[str]:
    text = dedent(HEAD) + dedent(routes)
    return [str(w) for w in warnings(parse(text, "mesh.yaml"), load_text(text, "mesh.yaml"))]


def route(name: str, prefix: str, service: str, *policies: str) -> str:
    return (f"  - {{name: {name}, match: {{path: {{prefix: {prefix}}}}}, forward: {{service: {service}}}, "
            f"policies: [{', '.join(policies)}]}}\n")


CASES = [
    ("open beside jwt", route("open", "/users", "users") + route("secure", "/secure", "users", "jwt", "read"),
     ["mesh.yaml:14: routes[0]: warning: route open exposes service users without authentication, but "
      "route secure (line 15) requires a JWT with scope users:read: a caller can skip that check through "
      "route open"]),
    ("fewer scopes", route("a", "/a", "users", "jwt", "read") + route("b", "/b", "users", "jwt", "admin"),
     ["mesh.yaml:14: routes[0]: warning: route a exposes service users a JWT with scope users:read, but "
      "route b (line 15) requires a JWT with scope users:admin, scope users:read: a caller can skip that "
      "check through route a"]),
    ("open beside api key", route("open", "/c", "catalog") + route("partner", "/p", "catalog", "keys"),
     ["mesh.yaml:14: routes[0]: warning: route open exposes service catalog without authentication, but "
      "route partner (line 15) requires an API key: a caller can skip that check through route open"]),
    ("open beside mTLS identities", route("open", "/c", "catalog") + route("internal", "/i", "catalog", "orders-only"),
     ["mesh.yaml:14: routes[0]: warning: route open exposes service catalog without authentication, but "
      "route internal (line 15) requires an allowed mTLS identity: a caller can skip that check through "
      "route open"]),
    ("the same checks twice", route("a", "/a", "users", "jwt", "read") + route("b", "/b", "users", "jwt", "read"), []),
    ("different kinds each check", route("a", "/a", "users", "jwt", "read") + route("b", "/b", "users", "orders-only"), []),
    ("an ip allow list is no authentication", route("a", "/a", "catalog", "local-only") + route("b", "/b", "catalog"), []),
    ("different services", route("a", "/a", "users", "jwt") + route("b", "/b", "catalog"), []),
]


@pytest.mark.parametrize("routes, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_warnings(routes, expected):
    assert lint(routes) == expected


def test_the_demo_has_no_warnings():
    text = (ROOT / "mesh.yaml").read_text()
    assert warnings(parse(text, "mesh.yaml"), load_text(text, "mesh.yaml")) == []


def test_validate_prints_warnings_and_exits_0(tmp_path, capsys):
    path = tmp_path / "mesh.yaml"
    path.write_text(dedent(HEAD) + dedent(route("open", "/users", "users") + route("s", "/s", "users", "jwt")))
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:14: routes[0]: warning: route open exposes service users without")
    assert out[1:] == ["ok"]


def test_a_limit_by_api_key_where_no_api_key_policy_verifies_one():
    limit = "  per-key: {rate_limit: {minute: 10, key: api_key}}\n"
    text = dedent(HEAD.replace("routes:\n", limit + "routes:\n")) + dedent(
        route("open", "/c", "catalog", "per-key")
        + route("partner", "/p", "catalog", "keys", "per-key")
        + route("token", "/u", "users", "jwt", "per-key"))
    found = [str(w) for w in warnings(parse(text, "mesh.yaml"), load_text(text, "mesh.yaml"))]
    assert found[0] == (
        "mesh.yaml:13: policies.per-key.rate_limit.key: warning: key: api_key counts the API keys "
        "an api_key policy verifies, but route open, route token have no api_key policy: there "
        "every request is counted by its client IP; use key: consumer or ip, or add an api_key policy")
    assert len(found) == 2 and "route open exposes service catalog without" in found[1]


@pytest.mark.parametrize("admin, expected", [
    ("gateway: {listeners: [{name: public, port: 18080}], admin: {address: 0.0.0.0, port: 9901}}",
     ["mesh.yaml:2: gateway.admin.address: warning: the gateway's admin listener binds 0.0.0.0, "
      "not a loopback address: /status and /metrics answer whoever reaches it, /flows whoever has "
      "its token (Envoy's advice: never expose the admin interface); keep it on 127.0.0.1"]),
    ("gateway: {listeners: [{name: public, port: 18080}]}\n"
     "sidecar: {admin: {address: 10.0.0.5, port: 15000}}",
     ["mesh.yaml:3: sidecar.admin.address: warning: 10.0.0.5 is not a loopback address: a "
      "sidecar's admin listener is meant for the host only, as /status and /metrics answer "
      "whoever reaches it, /flows whoever has its token (Envoy's advice: never expose the admin "
      "interface); a sidecar "
      "binds it on its instance's own address (--address), which should be loopback too"]),
    ("gateway: {listeners: [{name: public, port: 18080}], admin: {address: 127.0.0.9}}", []),
    ("gateway: {listeners: [{name: public, port: 18080}], admin: {address: '::1'}}", []),
], ids=["gateway-admin-on-every-interface", "sidecar-admin-on-a-lan-address", "loopback",
        "ipv6-loopback"])
def test_an_admin_listener_beyond_loopback(admin, expected):
    head = dedent(HEAD).replace("gateway: {listeners: [{name: public, port: 18080}]}", admin)
    text = head + "  []\n"  # no routes
    found = [str(w) for w in warnings(parse(text, "mesh.yaml"), load_text(text, "mesh.yaml"))]
    assert found == expected


@pytest.mark.parametrize("etcd, expected", [
    ("{endpoints: [127.0.0.1:2379, 10.0.0.7:2379]}",
     ["mesh.yaml:7: discovery.etcd.endpoints[1]: warning: 10.0.0.7:2379 is reached over plain "
      "http, not on loopback: whoever reaches that member can register an instance of any service "
      "(or, with the store there, push a config); serve etcd with --client-cert-auth and set "
      "discovery.etcd.tls (docs/howto/etcd.md)"]),
    ("{endpoints: [10.0.0.7:2379], tls: {}}", []),
    ("{endpoints: [127.0.0.1:2379, 127.0.0.2:2379]}", []),
], ids=["plain-beyond-loopback", "mutual-tls", "plain-on-loopback"])
def test_etcd_discovery_over_plain_http_beyond_loopback(etcd, expected):
    text = dedent(HEAD).replace("policies:", f"discovery:\n  etcd: {etcd}\npolicies:", 1) + "  []\n"
    found = [str(w) for w in warnings(parse(text, "mesh.yaml"), load_text(text, "mesh.yaml"))]
    assert found == expected


UNDERSCORED = """
version: 1
gateway: {listeners: [{name: public, port: 18080}]%s}
services:
  users: {versions: {v1: {endpoints: ["127.0.0.1:19001"]}}}
policies:
  keys: {api_key: {header: x_api_key, consumers: {acme: {key_sha256: "%s"}}}}
  dashed: {api_key: {header: x-api-key, consumers: {acme: {key_sha256: "%s"}}}}
  set-it: {transform: {request: {set: {headers: {x_user: "a"}}}}}
routes:
  - name: keyed
    match: {path: {prefix: /k}, headers: {x_tenant: blue}}
    forward: {service: users}
    policies: [keys, set-it]
"""
DROPPING = ("but gateway.http.headers_with_underscores_action is DROP_HEADER, "
            "sidecar.http.headers_with_underscores_action is DROP_HEADER: such a header is gone "
            "before anything reads it; use a dash")


@pytest.mark.parametrize("http, sidecar, expected", [
    ("", "", [f"mesh.yaml:11: routes[0].match.headers: warning: the header name 'x_tenant' holds "
              f"an underscore, {DROPPING} ('x-tenant') or set ALLOW",
              f"mesh.yaml:6: policies.keys.api_key.header: warning: the header name 'x_api_key' "
              f"holds an underscore, {DROPPING} ('x-api-key') or set ALLOW"]),
    (", http: {headers_with_underscores_action: ALLOW}",
     "sidecar: {http: {headers_with_underscores_action: ALLOW}}\n", []),
], ids=["dropped-by-default", "allowed"])
def test_a_header_the_config_reads_that_its_listeners_drop(http, sidecar, expected):
    """A header a route matches on or a policy reads its key from, spelled with `_`: dropped (or
    refused) before it is read. A header the proxy sets (a transform's) is not read: no warning."""
    text = dedent(UNDERSCORED) % (http, "0" * 64, "0" * 64) + sidecar
    found = [str(w) for w in warnings(parse(text, "mesh.yaml"), load_text(text, "mesh.yaml"))]
    assert [f for f in found if "underscore" in f] == expected
