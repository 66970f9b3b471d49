"""Certificates: the mesh CA, SPIFFE workload certificates, renewal points, 0600 keys."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.security import pki

ROOT = Path(__file__).resolve().parents[2]
ORDERS = "spiffe://mitmesh.local/ns/demo/sa/orders"


def test_mesh_ca_and_workload_certificate(tmp_path):
    assert pki.init_mesh(tmp_path, "mitmesh.local") == [tmp_path / "mesh-ca.pem"]
    assert pki.init_mesh(tmp_path, "mitmesh.local") == []  # kept unless forced
    cert_path = pki.issue_workload(tmp_path, "orders", ORDERS)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "mesh-ca.pem").read_bytes())
    assert pki.spiffe_of(cert) == ORDERS
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u._name for u in usage} == {"serverAuth", "clientAuth"}
    life = cert.not_valid_after_utc - (cert.not_valid_before_utc + pki.SKEW)
    assert abs(life - dt.timedelta(hours=24)) < dt.timedelta(seconds=5)
    for key in (tmp_path / "ca" / "mesh-ca.key", tmp_path / "workload" / "orders.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (tmp_path / "mesh-ca.key").exists()  # CA keys live apart from what proxies read
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700


def test_ca_keys_of_an_older_layout_move_into_the_ca_directory(tmp_path):
    pki.init_mesh(tmp_path, "mitmesh.local")
    pki.init_edge(tmp_path)
    for name in ("mesh-ca", "edge-ca"):  # as an older mitmesh left them, beside the certificates
        (tmp_path / "ca" / f"{name}.key").rename(tmp_path / f"{name}.key")
    (tmp_path / "ca").rmdir()
    assert pki.init_mesh(tmp_path, "mitmesh.local") == [] and pki.init_edge(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["edge-ca.key", "mesh-ca.key"]
    assert not list(tmp_path.glob("*-ca.key"))
    pki.issue_workload(tmp_path, "orders", ORDERS)  # the moved key still signs


def test_spiffe_ids():
    assert pki.spiffe_id("mitmesh.local", "demo", "orders") == ORDERS


def test_renewal_is_due_at_the_configured_share_of_the_lifetime(tmp_path):
    pki.init_mesh(tmp_path, "mitmesh.local")
    names = {"orders": ORDERS}
    life = dt.timedelta(seconds=60)
    assert pki.renew_due(tmp_path, names, life) == [("orders", "missing")]
    assert pki.renew_due(tmp_path, names, life) == []
    cert = x509.load_pem_x509_certificate((tmp_path / "workload" / "orders.pem").read_bytes())
    issued = cert.not_valid_before_utc + pki.SKEW
    assert pki.renew_due(tmp_path, names, life, now=issued + dt.timedelta(seconds=29)) == []
    assert pki.renew_due(tmp_path, names, life, now=issued + dt.timedelta(seconds=31)) == \
        [("orders", "past its renewal point")]
    # a longer configured lifetime than the file's is fine; a shorter one renews at once
    assert pki.renew_due(tmp_path, names, dt.timedelta(hours=1)) == []
    why = pki.renew_due(tmp_path, names, dt.timedelta(seconds=30))
    assert why and why[0][1].startswith("lifetime 0:01:00 is longer than the configured")


def test_renewal_follows_a_new_ca_and_identity(tmp_path):
    pki.init_mesh(tmp_path, "mitmesh.local")
    pki.renew_due(tmp_path, {"orders": ORDERS})
    assert pki.renew_due(tmp_path, {"orders": ORDERS.replace("demo", "prod")})[0][1].startswith(
        "identity is spiffe://mitmesh.local/ns/demo/sa/orders")
    pki.renew_due(tmp_path, {"orders": ORDERS})
    pki.init_mesh(tmp_path, "mitmesh.local", force=True)  # a new CA with the same name
    assert pki.renew_due(tmp_path, {"orders": ORDERS}) == [("orders", "signed by another CA")]


def test_certs_are_ignored_by_git():
    out = subprocess.run(["git", "check-ignore", "certs/ca/mesh-ca.key", "certs/workload/orders.key",
                          "certs/workload/orders.pem"], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == ["certs/ca/mesh-ca.key", "certs/workload/orders.key",
                                  "certs/workload/orders.pem"]


def test_describe(tmp_path):
    pki.init_mesh(tmp_path, "mitmesh.local")
    info = pki.describe(pki.issue_workload(tmp_path, "orders", ORDERS, dt.timedelta(hours=1)))
    assert info["spiffe_id"] == ORDERS and info["key_mode"] == "0o600"
    assert 3500 < info["expires_in_s"] <= 3600
