"""A sidecar's inbound TLS follows its service's mtls mode, and its service's authz policy is
applied at the inbound only. (Real handshakes and peers: tests/e2e/test_sidecar_mtls.py.)"""

from __future__ import annotations

import json

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons import chain, keys
from mesh.security import pki
from mesh.config.load import load_text
from mesh.core.state import MeshState, listeners_of
from mesh.core.workload import parse_workload

TD, NS = "mitmesh.local", "demo"
INBOUND = "reverse:http://127.0.0.1:9@127.0.0.1:16006"
OUTBOUND = "regular@127.0.0.1:15001"


def config(payments: int, mode: str = "DISABLE") -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  orders: {{versions: {{v1: {{}}}}}}
  payments:
    mtls: {mode}
    policies: [payments-callers]
    versions: {{v1: {{endpoints: ["127.0.0.1:{payments}"]}}}}
policies:
  payments-callers:
    authz:
      allow: [{{principals: ["{TD}/ns/{NS}/sa/orders"]}}]
"""


async def test_the_service_policy_applies_at_the_inbound_only(sidecar, upstream_app):
    app, payments = await upstream_app("payments-app"), await upstream_app("payments-elsewhere")
    # payments' own sidecar: a caller without a verified identity matches no allow rule
    async with sidecar(config(payments), f"service=payments,app=127.0.0.1:{app},inbound=16006") as sc:
        flow = await sc.send("/charge", method="POST", host="payments", mode=INBOUND)
        body = json.loads(flow.response.content)
        assert (flow.response.status_code, body["error"]) == (403, "access_denied")
        assert body["reason"] == "no allow rule of service payments matches a caller without mTLS identity"
        assert [who for who, _ in keys.get(flow).decisions] == ["inbound", "authz"]
    # orders' sidecar calling payments: the policy protects payments and is checked there, never
    # on the caller's way out
    async with sidecar(config(payments), f"service=orders,app=127.0.0.1:{app}") as sc:
        flow = await sc.send("/charge", method="POST", host="payments", target="payments", mode=OUTBOUND)
        assert flow.response.status_code == 200
        assert json.loads(flow.response.content)["name"] == "payments-elsewhere"


def test_inbound_tls_follows_the_service_mode():
    for mode, expected in (("STRICT", "STRICT"), ("PERMISSIVE", "PERMISSIVE"), ("DISABLE", None)):
        cfg = load_text(config(9, mode), "mesh.yaml")
        inbound, outbound = listeners_of(cfg, parse_workload("service=payments,app=127.0.0.1:1"))
        assert outbound.listener.tls is None
        if expected is None:
            assert inbound.listener.tls is None and inbound.path == "sidecar.inbound"
        else:
            tls = inbound.listener.tls
            assert (tls.mtls, tls.cert, tls.key) == (expected, "certs/workload/payments.pem",
                                                     "certs/workload/payments.key")
            assert inbound.path == "services.payments.mtls"
    # a sidecar of a service the config does not name stays plaintext
    cfg = load_text(config(9, "STRICT"), "mesh.yaml")
    assert listeners_of(cfg, parse_workload("service=nosuch,app=127.0.0.1:1"))[0].listener.tls is None


async def test_a_strict_service_without_its_workload_certificate_is_a_config_error(write_config, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    pki.init_mesh(tmp_path / "certs", TD)
    pki.issue_workload(tmp_path / "certs", "orders", pki.spiffe_id(TD, NS, "orders"))
    path = write_config(config(9, "STRICT"))
    state = MeshState()
    with taddons.context(*chain.sidecar(state)) as tctx:
        with pytest.raises(exceptions.OptionsError) as e:  # its own error, not the rollback's
            tctx.options.update(mesh_config=str(path), mesh_reload=False,
                                mesh_workload="service=payments,app=127.0.0.1:1,inbound=16006")
        await state.pool.close()
    message = str(e.value)
    assert ": services.payments.mtls: STRICT needs the workload certificate of payments: cannot use " \
           "certs/workload/payments.pem with key certs/workload/payments.key: no such file: " \
           "certs/workload/payments.pem, certs/workload/payments.key; " in message
    assert message.endswith("; `mitmesh certs issue payments` makes one (got 'STRICT')")
