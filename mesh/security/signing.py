"""Operator signatures on config revisions: a proxy runs only what the operator's certificate of
its mesh CA signed, never what any other holder of a mesh certificate (a workload) stored.

etcd's mutual TLS says who may reach the store, and every workload may; it cannot say who may
write a config (etcd 3.4's JSON gateway ignores client certificate names). So, like TUF or
Sigstore, the content carries its own proof of origin: the operator's signature and certificate.
A proxy signs what it says of itself (its presence record) the same way, with its own workload key,
so that `mitmesh config rollout` believes only gateways (`check(..., whose=...)`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.security import pki

KEY_TYPES = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
PROOF = ("signature", "certificate")  # the fields a signed record carries its proof in


def content_bytes(purpose: str, mesh: str, record: dict) -> bytes:
    """What is signed of a record: every field but its proof, the mesh and what it is."""
    body = {k: v for k, v in record.items() if k not in PROOF}
    return json.dumps({"purpose": purpose, "mesh": mesh, "record": body}, sort_keys=True,
                      separators=(",", ":")).encode()


def sign_record(purpose: str, mesh: str, record: dict, signer: Signer) -> dict:
    """`record` with its proof: the signature over `content_bytes` and the signer's certificate
    (a presence record, a selection, an instance: JSON anyone with a mesh certificate can write)."""
    return {**record, "signature": signer.sign(content_bytes(purpose, mesh, record)),
            "certificate": signer.certificate}


def check_record(purpose: str, mesh: str, record: dict, ca_file: str,
                 whose: Callable[[x509.Certificate], str | None] | None = None) -> None:
    """Raises ValueError saying why `record`'s proof (`sign_record`) does not hold: `check`, by
    default for the operator's certificate."""
    check(content_bytes(purpose, mesh, record), record.get("signature"),
          record.get("certificate"), ca_file, whose=whose or operator_problem)


def valid_until(certificate: str) -> float | None:
    """When a PEM certificate stops being valid (Unix time); None: none, or not PEM."""
    if not certificate:
        return None
    try:
        cert = x509.load_pem_x509_certificate(certificate.encode())
    except ValueError:
        return None
    return cert.not_valid_after_utc.timestamp()


def of_identity(wanted: frozenset[str], name: str) -> Callable[[x509.Certificate], str | None]:
    """`whose` for `check`: a certificate whose SPIFFE ID is one of `wanted`, else why not
    (`name`: whose it should be, as the message says it)."""
    def whose(cert: x509.Certificate) -> str | None:
        spiffe = pki.spiffe_of(cert)
        if spiffe in wanted:
            return None
        return f"its certificate is {spiffe or cert.subject.rfc4514_string()}'s, not {name}"
    return whose


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


@dataclass(frozen=True)
class Signer:
    """The operator's private key, and its certificate (PEM) stored beside each signature."""

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    certificate: str

    @classmethod
    def load(cls, cert: str | Path, key: str | Path) -> Signer:
        """Raises ValueError naming the file that cannot be used."""
        try:
            pem = x509.load_pem_x509_certificates(Path(cert).read_bytes())[0]
        except (OSError, ValueError) as e:
            raise ValueError(f"cert: not a PEM certificate ({e}) (got {str(cert)!r})") from None
        try:
            private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"key: not an unencrypted PEM private key ({e}) "
                             f"(got {str(key)!r})") from None
        if not isinstance(private, KEY_TYPES):
            raise ValueError(f"key: expected an EC, RSA or Ed25519 key (got {str(key)!r})")
        if private.public_key() != pem.public_key():
            raise ValueError(f"cert/key: the key is not the certificate's "
                             f"(got {str(cert)!r}, {str(key)!r})")
        return cls(private, pem.public_bytes(serialization.Encoding.PEM).decode())

    def sign(self, data: bytes) -> str:
        """The signature of `data`, base64: ECDSA or RSA-PSS with SHA-256, or Ed25519."""
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            raw = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(self.key, rsa.RSAPrivateKey):
            raw = self.key.sign(data, _pss(), hashes.SHA256())
        else:
            raw = self.key.sign(data)
        return base64.b64encode(raw).decode()


def operator_problem(cert: x509.Certificate) -> str | None:
    """Why `cert` is not an operator certificate (CN, no SPIFFE ID, client auth only), or None."""
    spiffe = [u for u in _uris(cert) if u.startswith("spiffe://")]
    if spiffe:
        return f"it is a workload certificate ({spiffe[0]}), not the operator's"
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [pki.OPERATOR_CN]:
        return f"its certificate is not the operator's: CN {pki.OPERATOR_CN!r} (got {names})"
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "its certificate is a CA's, not the operator's"
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "its certificate has no extended key usage: the operator's is for client auth"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return "its certificate is not for client auth, as the operator's is"
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:  # an etcd member's, whose CN is its free name
        return "its certificate is a server's (an etcd member's?), not the operator's"
    return None


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return sans.get_values_for_type(x509.UniformResourceIdentifier)


def _issued_by(cert: x509.Certificate, cas: list[x509.Certificate]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def check(data: bytes, signature: object, certificate: object, ca_file: str,
          at: dt.datetime | None = None,
          whose: Callable[[x509.Certificate], str | None] = operator_problem) -> None:
    """Raises ValueError saying why `signature` over `data` is not the operator's: its certificate
    must be issued by a CA of `ca_file`, be an operator certificate (`whose`: why a certificate
    is not the signer's, or None), be valid `at` (default now), and the signature must verify
    with its key."""
    if not signature or not certificate or not isinstance(signature, str) \
            or not isinstance(certificate, str):
        raise ValueError("it is not signed")
    try:
        cert = x509.load_pem_x509_certificate(certificate.encode())
    except ValueError as e:
        raise ValueError(f"its certificate is not PEM ({e})") from None
    try:
        cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"the mesh CA cannot be read ({e}) (got {ca_file!r})") from None
    subject = cert.subject.rfc4514_string()
    if not _issued_by(cert, cas):
        raise ValueError(f"its certificate ({subject}) is not issued by the mesh CA {ca_file}")
    problem = whose(cert)
    if problem:
        raise ValueError(problem)
    at = at or dt.datetime.now(dt.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= at <= end:
        raise ValueError(f"its certificate is valid from {start:%Y-%m-%d %H:%M} to "
                         f"{end:%Y-%m-%d %H:%M} UTC (at {at:%Y-%m-%d %H:%M})")
    try:
        raw = base64.b64decode(signature, validate=True)
        key = cert.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(raw, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, data, _pss(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, data)
        else:
            raise ValueError(f"its certificate's key is not EC, RSA or Ed25519 ({subject})")
    except (InvalidSignature, binascii.Error):
        raise ValueError("the signature does not match its content: it was changed after it "
                         "was signed") from None
