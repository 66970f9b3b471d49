"""Certificates with `cryptography`: a demo edge CA and the gateway's edge certificate.

Private keys are written 0600; certs/ is ignored by git except its README.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_ca(common_name: str, days: int = 3650) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mitmesh")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(ca: Issued, common_name: str, *, dns: list[str] = (), ips: list[str] = (),
          uris: list[str] = (), lifetime: dt.timedelta = dt.timedelta(days=365),
          not_before: dt.datetime | None = None, server: bool = True, client: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    start = not_before or (_now() - dt.timedelta(minutes=5))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=bool(uris) and not dns)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write(issued: Issued, cert_path: Path, key_path: Path, chain: list[x509.Certificate] = ()) -> None:
    """Write key (0600, atomically) then cert chain; readers never see a key without its cert."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = issued.key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    _atomic(key_path, key_pem, 0o600)
    pem = issued.cert.public_bytes(serialization.Encoding.PEM)
    pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    _atomic(cert_path, pem, 0o644)


def _atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read(cert_path: Path, key_path: Path) -> Issued:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issued(cert, key)


def init_edge(directory: Path, hosts: list[str] = ("localhost",), ips: list[str] = ("127.0.0.1",),
              force: bool = False) -> list[Path]:
    """The demo edge CA and the gateway's edge certificate; kept if present unless `force`."""
    ca_cert, ca_key = directory / "edge-ca.pem", directory / "edge-ca.key"
    cert, key = directory / "edge.pem", directory / "edge.key"
    made = []
    if force or not (ca_cert.exists() and ca_key.exists()):
        write(new_ca("mitmesh demo edge CA"), ca_cert, ca_key)
        made.append(ca_cert)
        force = True
    if force or not (cert.exists() and key.exists()):
        ca = read(ca_cert, ca_key)
        write(issue(ca, hosts[0], dns=list(hosts), ips=list(ips)), cert, key, chain=[ca.cert])
        made.append(cert)
    return made
