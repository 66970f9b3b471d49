"""build(): one pass from a file to a snapshot; anything unusable rejects the config, and the
snapshot already installed keeps serving."""

from __future__ import annotations

import pytest

from mesh.config import ConfigError
from mesh.core.build import build
from mesh.core.plan import FEATURES, RoutePlan
from mesh.core.state import MeshState
from tests.conftest import BASE

BAD = [
    # a listener certificate that does not exist
    (BASE.replace("- {name: public, port: 18080}",
                  "- {name: public, port: 18080, tls: {cert: missing.pem, key: missing-key.pem}}"),
     "mesh.yaml:1: gateway.listeners[0].tls: cannot use certificate missing.pem with key missing-key.pem: "
     "no such file: missing.pem, missing-key.pem"),
    # a regex that does not compile
    (BASE.replace("match: {path: {prefix: /users}}", "match: {path: {regex: '/users/(['}}"),
     "mesh.yaml:16: routes[0].match.path.regex: invalid regular expression: unterminated character set "
     "at position 8 (got '/users/([')"),
    # a JWKS URL that is not a URL
    (BASE + "policies:\n  auth: {jwt: {issuer: https://id.example, jwks_uri: 'id.example/jwks'}}\n",
     "mesh.yaml:22: policies.auth.jwt.jwks_uri: expected an http:// or https:// URL (got 'id.example/jwks')"),
]


@pytest.mark.parametrize("text, error", BAD, ids=["certificate", "regex", "jwks_uri"])
def test_an_unusable_config_is_rejected_and_the_old_snapshot_keeps_serving(write_config, text, error):
    state = MeshState()
    path = write_config()
    old = state.install(build(str(path), state.runtime))
    write_config(text)
    with pytest.raises(ConfigError) as e:
        build(str(path), state.runtime)
    assert error in str(e.value).replace(str(path), "mesh.yaml")
    assert state.snapshot is old and old.routes.match("x", "/users/a", "GET", lambda h: None, dict).name == "users"


def test_every_route_has_a_frozen_plan_with_one_field_per_feature(write_config):
    path = write_config(BASE + "policies:\n  limited: {rate_limit: {minute: 5}}\n")
    text = path.read_text().replace("forward: {service: users}", "forward: {service: users}\n    policies: [limited]")
    path.write_text(text)
    snap = build(str(path))
    users, catalog = snap.routes.routes
    assert users.plan.rate_limit is not None and users.plan.authn is None and users.plan.cors is None
    assert catalog.plan.rate_limit is None and catalog.plan == RoutePlan(forward=catalog.plan.forward)
    assert {f.field for f in FEATURES} <= set(RoutePlan.__dataclass_fields__)
    with pytest.raises(AttributeError):
        users.plan.rate_limit = None  # frozen


def test_discovered_clusters_make_a_new_snapshot_not_a_changed_one(write_config):
    from discovery import Event, Instance
    state = MeshState()
    snap = state.install(build(str(write_config()), state.runtime))
    state.registry.apply(Event("add", Instance("mdns:s1", "search", "v7", "127.0.0.9", 15007)))
    assert "search" not in snap.clusters and "search/v7" in state.snapshot.clusters
    assert state.snapshot.version == snap.version


def test_a_config_from_text_is_built_for_the_proxy_like_a_file(write_config):
    """etcd's revisions (build_text) get the same one build as a file: the sidecar's workload (its
    zone and region, its inbound and outbound routes)."""
    from mesh.core.build import build_text
    from mesh.core.workload import parse_workload

    state = MeshState()
    text = write_config().read_text()
    workload = parse_workload("service=users,app=127.0.0.1:9101,zone=a,region=eu")
    snap = build_text(text, "etcd:rev-3", "abc", state.runtime, workload)
    assert (snap.workload, snap.zone, snap.region, snap.digest) == (workload, "a", "eu", "abc")
    assert set(snap.sidecar_routes) == set(build(str(write_config()), state.runtime, workload).sidecar_routes) != set()
    state.workload = workload
    assert state.install(snap).region == "eu" and state.region == "eu"


def test_claim_headers_are_folded_so_every_spelling_is_one():
    from mesh.config import load_text
    from mesh.core.build import claim_headers

    config = load_text(BASE + f"""policies:
  k:
    api_key:
      consumers: {{a: {{key_sha256: '{"0" * 64}'}}}}
      forward_claims: {{consumer: X-Consumer, tier: x_tier}}
  j:
    jwt:
      issuer: https://id.example
      jwks_uri: https://id.example/k
      forward_claims: {{sub: X_Authenticated_Userid}}
""", "mesh.yaml")
    assert claim_headers(config) == {b"x-consumer", b"x-tier", b"x-authenticated-userid"}


ETCD = BASE + "discovery:\n  etcd:\n    endpoints: [127.0.0.1:2379]\n    tls: %s\n"


def test_etcd_tls_files_resolve_against_the_config_or_are_the_workloads(write_config, tmp_path):
    """discovery.etcd.tls: named files relative to the config; unnamed ones are the mesh CA and
    this proxy's workload certificate (the gateway's gateway.identity)."""
    (tmp_path / "etcd-ca.pem").write_text("")
    snap = build(str(write_config(ETCD % "{ca: etcd-ca.pem}")))
    tls = snap.etcd_tls
    assert (tls.ca, tls.cert, tls.key) == (str(tmp_path / "etcd-ca.pem"),
                                           str(tmp_path / "certs/workload/gateway.pem"),
                                           str(tmp_path / "certs/workload/gateway.key"))
    assert build(str(write_config())).etcd_tls is None  # no tls: plain http


@pytest.mark.parametrize("tls, error", [
    ("{cert: client.pem, key: client.key}",
     "mesh.yaml:24: discovery.etcd.tls.cert: no such file (got 'client.pem')\n"
     "mesh.yaml:24: discovery.etcd.tls.key: no such file (got 'client.key')"),
    ("{cert: client.pem}", "mesh.yaml:24: discovery.etcd.tls: cert and key go together: name both, "
                           "or neither for the workload certificate"),
])
def test_unusable_etcd_tls_files_are_named(write_config, tls, error):
    path = write_config(ETCD % tls)
    with pytest.raises(ConfigError) as e:
        build(str(path))
    assert str(e.value).replace(str(path), "mesh.yaml") == error
