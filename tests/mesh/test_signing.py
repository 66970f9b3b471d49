"""Operator signatures on revisions: only the operator's certificate of the mesh CA, within its
validity, over the very bytes a proxy applies; a workload's, another CA's, a changed text are
refused, each saying why."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.security import pki, signing
from mesh.security.signing import Signer

DATA = b'{"mesh":"demo","revision":1}'


@pytest.fixture
def certs(tmp_path):
    directory = tmp_path / "certs"
    pki.init_mesh(directory, "mitmesh.local")
    pki.ensure_operator(directory)
    return directory


def operator(certs) -> Signer:
    return Signer.load(*pki.operator_paths(certs))


def refusal(certs, signer: Signer, data: bytes = DATA, at: dt.datetime | None = None) -> str:
    with pytest.raises(ValueError) as e:
        signing.check(data, signer.sign(DATA), signer.certificate, str(pki.mesh_ca_cert(certs)),
                      at)
    return str(e.value)


def leaf(certs, name: str, **kw) -> Signer:
    """A certificate of the mesh CA that is not the operator's."""
    ca = pki.read(*pki.mesh_ca_paths(certs))
    cert, key = certs / f"{name}.pem", certs / f"{name}.key"
    pki.write(pki.issue(ca, name, **kw), cert, key)
    return Signer.load(cert, key)


def test_the_operator_signs(certs):
    signer = operator(certs)
    signing.check(DATA, signer.sign(DATA), signer.certificate, str(pki.mesh_ca_cert(certs)))


def test_a_workload_certificate_is_refused(certs):
    spiffe = pki.spiffe_id("mitmesh.local", "demo", "gateway")
    cert = pki.issue_workload(certs, "gateway", spiffe)
    workload = Signer.load(cert, cert.with_suffix(".key"))
    assert refusal(certs, workload) == (f"it is a workload certificate ({spiffe}), "
                                        f"not the operator's")


@pytest.mark.parametrize("name, kw, error", [
    ("etcd0", {"ips": ["127.0.0.1"], "client": True},
     "its certificate is not the operator's: CN 'mitmesh operator' (got ['etcd0'])"),
    (pki.OPERATOR_CN, {"server": True, "client": False},
     "its certificate is not for client auth, as the operator's is"),
])
def test_other_certificates_of_the_mesh_ca_are_refused(certs, name, kw, error):
    assert refusal(certs, leaf(certs, name, **kw)) == error


def test_another_mesh_cas_operator_is_refused(certs, tmp_path):
    other = tmp_path / "other"
    pki.init_mesh(other, "mitmesh.local")
    pki.ensure_operator(other)
    assert refusal(certs, operator(other)) == (f"its certificate (CN=mitmesh operator) is not "
                                               f"issued by the mesh CA {pki.mesh_ca_cert(certs)}")


def test_a_changed_content_is_refused(certs):
    assert refusal(certs, operator(certs), data=DATA + b" ") == (
        "the signature does not match its content: it was changed after it was signed")


def test_an_expired_certificate_is_refused(certs):
    later = dt.datetime.now(dt.UTC) + pki.CONTROL_LIFETIME + dt.timedelta(days=1)
    assert "its certificate is valid from " in refusal(certs, operator(certs), at=later)


def test_unsigned_is_refused(certs):
    with pytest.raises(ValueError, match="^it is not signed$"):
        signing.check(DATA, "", "", str(pki.mesh_ca_cert(certs)))


def test_an_rsa_operator_key_signs(certs):
    """pki issues EC P-256 keys; an operator certificate from a CA tool may hold RSA."""
    ca = pki.read(*pki.mesh_ca_paths(certs))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, pki.OPERATOR_CN)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    pki.write(pki.Issued(cert, key), certs / "rsa.pem", certs / "rsa.key")
    signer = Signer.load(certs / "rsa.pem", certs / "rsa.key")
    signing.check(DATA, signer.sign(DATA), signer.certificate, str(pki.mesh_ca_cert(certs)))
    assert refusal(certs, signer, data=b"other").startswith("the signature does not match")


def test_a_key_of_another_certificate_is_named(certs):
    spiffe = pki.spiffe_id("mitmesh.local", "demo", "gateway")
    cert = pki.issue_workload(certs, "gateway", spiffe)
    with pytest.raises(ValueError, match="cert/key: the key is not the certificate's"):
        Signer.load(pki.operator_paths(certs)[0], cert.with_suffix(".key"))
