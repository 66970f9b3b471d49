"""Presence records in an etcds:// store: what `mitmesh config rollout` believes of a gateway (its
name, admin URL, the revision it runs) only when the gateway signed it, with the workload key of
its own SPIFFE ID, lately; every other record, each saying why, is refused."""

from __future__ import annotations

import json
import time

import pytest

from mesh.runtime.store import PRESENCE, PRESENCE_MAX_AGE, PresenceTrust, signed_presence
from mesh.security import pki
from mesh.security.signing import Signer, content_bytes
from tests.mesh.test_signing import certs  # noqa: F401 (fixture: a mesh CA and the operator)

MESH = "demo"
GATEWAY = pki.spiffe_id("mitmesh.local", "demo", "gateway")
RECORD = {"role": "gateway", "admin": "http://127.0.0.1:9901", "proxy": "gw-a", "pid": 7,
          "revision": 3, "wanted": 3, "refused": None}


def workload(certs, name: str) -> Signer:
    cert = pki.issue_workload(certs, name, pki.spiffe_id("mitmesh.local", "demo", name))
    return Signer.load(cert, cert.with_suffix(".key"))


def trust(certs) -> PresenceTrust:
    return PresenceTrust(str(pki.mesh_ca_cert(certs)), frozenset({GATEWAY}))


def refusal(certs, record: dict, now: float | None = None) -> str:
    with pytest.raises(ValueError) as e:
        trust(certs).check(record, MESH, now)
    return str(e.value)


def test_a_gateways_own_record_is_believed(certs):
    record = signed_presence(MESH, RECORD, workload(certs, "gateway"))
    trust(certs).check(json.loads(json.dumps(record)), MESH)  # as read back from etcd
    assert record["at"] == pytest.approx(time.time(), abs=5)


def test_an_unsigned_record_is_refused(certs):
    assert refusal(certs, {**RECORD, "at": time.time()}) == "it is not signed"


def test_a_workloads_signed_record_is_refused(certs):
    """The attack itself: a workload signs, with its own valid key, a record naming itself a
    gateway."""
    record = signed_presence(MESH, RECORD, workload(certs, "catalog"))
    assert refusal(certs, record) == (
        f"its certificate is spiffe://mitmesh.local/ns/demo/sa/catalog's, not a gateway's "
        f"({GATEWAY})")


def test_the_operators_record_is_refused(certs):
    """The operator signs revisions, never presence: it runs no gateway."""
    record = signed_presence(MESH, RECORD, Signer.load(*pki.operator_paths(certs)))
    assert "CN=mitmesh operator's, not a gateway's" in refusal(certs, record)


@pytest.mark.parametrize("field,value", [("admin", "http://127.0.0.1:1"), ("revision", 4),
                                         ("proxy", "gw-b"), ("role", "sidecar"), ("at", 1.0)])
def test_a_changed_record_is_refused(certs, field, value):
    """A gateway's real record with one field changed: its admin URL pointed elsewhere, a
    revision it does not run, another gateway's name, or a fresh time on an old record."""
    record = signed_presence(MESH, RECORD, workload(certs, "gateway"))
    record[field] = record["at"] + value if field == "at" else value
    assert refusal(certs, record) == ("the signature does not match its content: it was "
                                      "changed after it was signed")


def test_a_record_of_another_mesh_is_refused(certs):
    record = signed_presence("other", RECORD, workload(certs, "gateway"))
    assert "does not match its content" in refusal(certs, record)


def test_another_cas_gateway_is_refused(certs, tmp_path):
    other = tmp_path / "other"
    pki.init_mesh(other, "mitmesh.local")
    record = signed_presence(MESH, RECORD, workload(other, "gateway"))
    assert "is not issued by the mesh CA" in refusal(certs, record)


@pytest.mark.parametrize("skew", [PRESENCE_MAX_AGE + 1, -(PRESENCE_MAX_AGE + 1)])
def test_an_old_or_future_record_is_refused(certs, skew):
    """A copy of a gateway's record kept after the gateway is gone (its lease ended), replayed
    with no lease, names a gateway that no longer answers, or that another process answers for
    on its admin port: believed for PRESENCE_MAX_AGE at most."""
    record = signed_presence(MESH, RECORD, workload(certs, "gateway"))
    assert "not within 120s of now" in refusal(certs, record, now=record["at"] + skew)
    trust(certs).check(record, MESH, now=record["at"] + PRESENCE_MAX_AGE - 1)


def test_the_signature_covers_every_field_but_itself():
    a = content_bytes(PRESENCE, MESH, {**RECORD, "signature": "x", "certificate": "y"})
    assert a == content_bytes(PRESENCE, MESH, RECORD)
    assert content_bytes(PRESENCE, MESH, {**RECORD, "extra": 1}) != a
