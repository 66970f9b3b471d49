"""Instance records in etcd with TLS: a proxy takes an instance of a service only as that
service's workload signed it (its SPIFFE ID, the mesh CA, valid now); a refresh signs again only
when the certificate changed."""

from __future__ import annotations

import dataclasses

import pytest

from discovery.etcd import decode, encode
from discovery.etcdapi import KeyValue
from discovery.registry import Instance
from mesh.security import pki
from mesh.security.instances import InstanceSigner, verifier
from tests.mesh.test_signing import certs  # noqa: F401 (fixture: a mesh CA and the operator)

MESH = "demo"
CATALOG = pki.spiffe_id("mitmesh.local", "demo", "catalog")
INST = Instance(name="etcd:127.0.0.5:15006", service="catalog", version="v1", address="127.0.0.5",
                port=15006, identity=CATALOG, source="etcd", workload="catalog-v1-1")


def signer(certs, name: str) -> InstanceSigner:
    cert = pki.issue_workload(certs, name, pki.spiffe_id("mitmesh.local", "demo", name))
    return InstanceSigner(MESH, str(cert), str(cert.with_suffix(".key")))


def read(certs, value: str) -> Instance:
    verify = verifier(MESH, str(pki.mesh_ca_cert(certs)), "mitmesh.local", "demo")
    return decode(KeyValue("/mitmesh/demo/instances/catalog/v1/127.0.0.5:15006", value, 1, 1),
                  verify)


def refusal(certs, value: str) -> str:
    with pytest.raises(ValueError) as e:
        read(certs, value)
    return str(e.value).partition(": ")[2]


def test_a_services_own_record_is_taken(certs):
    assert read(certs, encode(INST, signer(certs, "catalog"))) == INST


def test_another_workloads_record_is_refused(certs):
    assert refusal(certs, encode(INST, signer(certs, "users"))) == (
        f"not registered by service 'catalog' itself: its certificate is "
        f"spiffe://mitmesh.local/ns/demo/sa/users's, not {CATALOG}'s")


def test_an_unsigned_record_is_refused(certs):
    assert refusal(certs, encode(INST)) == ("not registered by service 'catalog' itself: it is "
                                            "not signed")


def test_a_record_claiming_another_identity_is_refused(certs):
    """catalog's own key, claiming payments' identity for its instance: mTLS would then expect
    payments' certificate of it."""
    payments = pki.spiffe_id("mitmesh.local", "demo", "payments")
    forged = encode(dataclasses.replace(INST, identity=payments), signer(certs, "catalog"))
    assert refusal(certs, forged) == (f"it claims identity {payments!r}, but service 'catalog' "
                                      f"runs as {CATALOG}")


def test_the_same_certificate_signs_once_a_renewed_one_again(certs):
    sign = signer(certs, "catalog")
    first = encode(INST, sign)
    assert encode(INST, sign) == first  # a refresh writes nothing to etcd
    pki.issue_workload(certs, "catalog", CATALOG)  # renewed, as `mitmesh certs` renews it
    renewed = encode(INST, sign)
    assert renewed != first and read(certs, renewed) == INST


def test_a_record_checked_once_is_checked_again_when_its_certificate_ends(certs):
    """Proofs that held are remembered (a reconnect lists every instance again), until the
    certificate that signed them ends: then the record is refused like any expired one."""
    import datetime as dt
    import time

    cert = pki.issue_workload(certs, "catalog", CATALOG, lifetime=dt.timedelta(seconds=2))
    value = encode(INST, InstanceSigner(MESH, str(cert), str(cert.with_suffix(".key"))))
    verify = verifier(MESH, str(pki.mesh_ca_cert(certs)), "mitmesh.local", "demo")
    kv = KeyValue("/mitmesh/demo/instances/catalog/v1/127.0.0.5:15006", value, 1, 1)
    assert decode(kv, verify) == INST and decode(kv, verify) == INST
    time.sleep(2.5)
    with pytest.raises(ValueError, match="its certificate is valid from"):
        decode(kv, verify)
