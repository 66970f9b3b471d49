"""What a client says about itself at the edge (RFC 7239 `Forwarded`, `X-Forwarded-*`, `X-Real-IP`):
sent as raw bytes to a real gateway, whose app must see only what the gateway said: the client's
address appended to `X-Forwarded-For`, the scheme and host of the client's own connection, and no
other claim. A sidecar inbound's downstream is a proxy of the mesh, whose word stays."""

from __future__ import annotations

import pytest

from .conftest import request, targets

pytestmark = pytest.mark.e2e

# (attack, the claim sent, what the app must see of that header: None for nothing)
CLAIMS = [
    ("x-forwarded-host-poisons-links", "X-Forwarded-Host", "evil.example", "x"),
    ("x-forwarded-proto-claims-https", "X-Forwarded-Proto", "https", "http"),
    ("x-forwarded-port-claims-443", "X-Forwarded-Port", "443", None),
    ("x-forwarded-prefix-claims-admin", "X-Forwarded-Prefix", "/admin", None),
    ("x-forwarded-path-claims-admin", "X-Forwarded-Path", "/admin", None),
    ("x-real-ip-claims-an-internal-address", "X-Real-IP", "10.0.0.1", None),
    ("rfc7239-forwarded-claims-all", "Forwarded", "for=1.2.3.4;host=evil;proto=https", None),
    ("x-forwarded-for-claims-an-internal-address", "X-Forwarded-For", "10.0.0.1",
     "10.0.0.1, 127.0.0.1"),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, engine):
    with targets(tmp_path_factory.mktemp("claims"), engine=engine) as m:
        yield m


def received(target, headers: dict) -> dict[str, list[str]]:
    reply = target.send(request("GET", "/app/x", {**headers, "Connection": "close"}))
    assert reply.status == 200, reply.raw[:300]
    seen: dict[str, list[str]] = {}
    for name, value in reply.json["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


@pytest.mark.parametrize("name, value, wanted", [c[1:] for c in CLAIMS], ids=[c[0] for c in CLAIMS])
def test_a_clients_claim_about_itself_never_reaches_the_app(mesh, name, value, wanted):
    seen = received(mesh.targets["gateway"], {name: value})
    assert seen.get(name.lower()) == (None if wanted is None else [wanted]), seen


def test_mixed_case_claims_are_all_replaced(mesh):
    claims = {"X-FORWARDED-HOST": "evil.example", "x-real-ip": "10.0.0.1",
              "X-Forwarded-Proto": "https"}
    seen = received(mesh.targets["gateway"], claims)
    assert (seen["x-forwarded-host"], seen["x-forwarded-proto"]) == (["x"], ["http"])
    assert "x-real-ip" not in seen


def test_at_a_sidecar_inbound_the_edges_word_stays(mesh):
    """The downstream of an inbound is the gateway or another sidecar: as at an Envoy sidecar
    (`use_remote_address: false`), the scheme and host the edge saw pass to the app."""
    seen = received(mesh.targets["sidecar"], {"X-Forwarded-Proto": "https",
                                              "X-Forwarded-Host": "shop.example",
                                              "X-Forwarded-For": "10.0.0.1"})
    assert seen["x-forwarded-proto"] == ["https"] and seen["x-forwarded-host"] == ["shop.example"]
    assert seen["x-forwarded-for"][0].startswith("10.0.0.1, "), seen
