"""Tls and Forward over mTLS: the gateway presents its workload certificate upstream and requires
the SPIFFE ID of the service (or the one discovery announced for the endpoint)."""

from __future__ import annotations

import json

import pytest
from mitmproxy import exceptions

from addons import keys
from mesh.security import pki
from tests.mesh.test_mtls import MeshServer


def decisions(flow) -> str:
    """What the proxy decided about a flow, as the operator sees it (client replies say less)."""
    return "\n".join(f"{who}: {what}" for who, what in keys.get(flow).decisions)

TD, NS = "mitmesh.local", "demo"


def sid(name: str) -> str:
    return pki.spiffe_id(TD, NS, name)


def config(port: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  payments:
    mtls: STRICT
    versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}
routes:
  - name: pay
    match: {{path: {{prefix: /}}}}
    forward: {{service: payments}}
"""


async def test_forward_uses_mtls_and_checks_the_upstream_identity(gateway, tmp_path):
    certs = tmp_path / "certs"
    pki.init_mesh(certs, TD)
    for name in ("gateway", "payments", "users"):
        pki.issue_workload(certs, name, sid(name))
    async with MeshServer(certs, "payments") as right, MeshServer(certs, "users") as wrong:
        async with gateway(config(right.port)) as gw:
            flow = await gw.send("/charge")
            assert flow.response.status_code == 200
            assert flow.response.content == sid("gateway").encode()  # the identity we presented
        async with gateway(config(wrong.port)) as gw:
            flow = await gw.send("/charge")
            assert flow.response.status_code == 503
            body = json.loads(flow.response.content)
            assert body["error"] == "upstream_connect_failure"
            assert body["reason"] == "payments/v1: no endpoint could be connected to (1 attempt)"
            assert f"refused: peer identity is {sid('users')}, expected {sid('payments')}" in decisions(flow)
            # an endpoint announcing another workload's identity is refused before any handshake
            # (secure naming): discovery cannot make users stand in for payments
            gw.state.snapshot.clusters["payments/v1"].endpoints[0].identity = sid("users")
            flow = await gw.send("/charge")
            assert json.loads(flow.response.content)["error"] == "upstream_connect_failure"
            assert (f"endpoint announced identity {sid('users')}, but service payments runs as "
                    f"{sid('payments')}") in decisions(flow)


async def test_an_endpoint_announced_as_https_is_called_over_mtls(gateway, tmp_path):
    """The service's config says nothing of mTLS (DISABLE), but discovery announced the endpoint as
    https, with the service's identity: the proxy calls it over mTLS all the same."""
    certs = tmp_path / "certs"
    pki.init_mesh(certs, TD)
    for name in ("gateway", "payments"):
        pki.issue_workload(certs, name, sid(name))
    async with MeshServer(certs, "payments") as server:
        async with gateway(config(server.port).replace("    mtls: STRICT\n", "")) as gw:
            ep = gw.state.snapshot.clusters["payments/v1"].endpoints[0]
            ep.protocol, ep.identity = "https", sid("payments")
            flow = await gw.send("/charge")
            assert (flow.response.status_code, flow.response.content) == (200, sid("gateway").encode())
            assert server.peers[-1][0] == sid("gateway")


async def test_missing_workload_certificate_is_a_config_error(gateway, tmp_path):
    pki.init_mesh(tmp_path / "certs", TD)
    with pytest.raises(exceptions.OptionsError) as e:
        async with gateway(config(9)):
            pass
    assert "gateway.identity: cannot load the workload certificate of gateway for mTLS upstreams " \
           "(payments)" in str(e.value) and "`mitmesh certs issue gateway` makes one (got 'gateway')" in str(e.value)
