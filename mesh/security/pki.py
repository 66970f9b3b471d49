"""Certificates with `cryptography`: the demo edge CA and edge certificate, the mesh CA, and
short-lived workload certificates carrying a SPIFFE ID, renewed before they expire.

Private keys are written 0600; certs/ is ignored by git except its README. Files are replaced
atomically (key first, then certificate), so a proxy watching them never reads half a file; a
proxy that sees a new key before its certificate keeps its old pair until both match.

The CAs' private keys live apart, in `<dir>/ca/` (mode 0700): only `mitmesh certs` and the renewer
of `mitmesh up` read them. Proxies read the CA certificates, their own listener key and their own
workload key, never anything under ca/ (a key there can mint any identity of the mesh).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


SKEW = dt.timedelta(minutes=5)  # certificates start this long before now, for clock skew


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
    """A leaf certificate valid from `not_before` (default: 5 minutes ago, for clock skew) until
    `lifetime` after now (or after `not_before` when given)."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    start = not_before or (_now() - SKEW)
    end = (not_before or _now()) + lifetime
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
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


CA_DIR = "ca"  # the CAs' private keys, mode 0700; never read by a proxy


def ca_key_path(directory: Path, name: str) -> Path:
    """Where the private key of CA `name` lives: `<dir>/ca/<name>.key`, in a directory of mode
    0700. A key left beside the certificates by an older mitmesh is moved there first."""
    keys = directory / CA_DIR
    path = keys / f"{name}.key"
    old = directory / f"{name}.key"
    if old.exists() or not keys.exists():
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(keys, 0o700)
        if old.exists() and not path.exists():
            os.replace(old, path)
    return path


def init_edge(directory: Path, hosts: list[str] = ("localhost",), ips: list[str] = ("127.0.0.1",),
              force: bool = False) -> list[Path]:
    """The demo edge CA and the gateway's edge certificate; kept if present unless `force`."""
    ca_cert, ca_key = directory / "edge-ca.pem", ca_key_path(directory, "edge-ca")
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


# ---------------------------------------------------------------------------------------------
# The mesh CA and workload identities (SPIFFE X.509 SVIDs), separate from the edge certificates.

MESH_CA = "mesh-ca"
WORKLOADS = "workload"
DEFAULT_LIFETIME = dt.timedelta(hours=24)  # Istio's default workload certificate lifetime


def spiffe_id(trust_domain: str, namespace: str, name: str) -> str:
    """The SPIFFE ID of a workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<name>`."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{name}"


def spiffe_of(cert: x509.Certificate) -> str | None:
    """The certificate's SPIFFE ID (its one spiffe:// URI SAN), or None."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    ids = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
           if u.startswith("spiffe://")]
    return ids[0] if len(ids) == 1 else None


def mesh_ca_paths(directory: Path) -> tuple[Path, Path]:
    """(certificate, private key) of the mesh CA; proxies read the first only."""
    return directory / f"{MESH_CA}.pem", ca_key_path(directory, MESH_CA)


def mesh_ca_cert(directory: Path) -> Path:
    """The mesh CA's certificate: the trust bundle of every proxy (touches nothing under ca/)."""
    return directory / f"{MESH_CA}.pem"


def workload_paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / WORKLOADS / f"{name}.pem", directory / WORKLOADS / f"{name}.key"


def init_mesh(directory: Path, trust_domain: str, force: bool = False) -> list[Path]:
    """The mesh CA (EC P-256) that signs workload certificates; kept if present unless `force`."""
    cert, key = mesh_ca_paths(directory)
    if not force and cert.exists() and key.exists():
        return []
    ca = new_ca(f"mitmesh mesh CA ({trust_domain})")
    write(ca, cert, key)
    return [cert]


def issue_workload(directory: Path, name: str, identity: str,
                   lifetime: dt.timedelta = DEFAULT_LIFETIME) -> Path:
    """Sign a workload certificate for `identity` (server and client use) and write it 0600."""
    ca = read(*mesh_ca_paths(directory))
    cert, key = workload_paths(directory, name)
    leaf = issue(ca, name, uris=[identity], lifetime=lifetime, server=True, client=True)
    write(leaf, cert, key, chain=[ca.cert])
    return cert


# ---------------------------------------------------------------------------------------------
# The control plane's etcd: its members' certificates and the operator's, from the mesh CA.

ETCD_DIR = "etcd"
OPERATOR = "operator"
# the operator's common name: not a workload name (those are lowercase, no space), so etcd, which
# takes a client certificate's CN as its user, never confuses the two
OPERATOR_CN = "mitmesh operator"
CONTROL_LIFETIME = dt.timedelta(days=90)


def etcd_member_paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / ETCD_DIR / f"{name}.pem", directory / ETCD_DIR / f"{name}.key"


def operator_paths(directory: Path) -> tuple[Path, Path]:
    """The certificate `mitmesh config` presents to an etcds:// store; its key signs revisions."""
    return directory / f"{OPERATOR}.pem", directory / f"{OPERATOR}.key"


def issue_etcd_member(directory: Path, name: str, host: str,
                      lifetime: dt.timedelta = CONTROL_LIFETIME) -> tuple[Path, Path]:
    """An etcd member's certificate for `host`, from the mesh CA: server for its client and peer
    URLs, and client as well: its peers and its own JSON gateway dial it with this one."""
    ca = read(*mesh_ca_paths(directory))
    cert, key = etcd_member_paths(directory, name)
    leaf = issue(ca, name, ips=[host], dns=["localhost"], lifetime=lifetime, server=True,
                 client=True)
    write(leaf, cert, key, chain=[ca.cert])
    return cert, key


def issue_operator(directory: Path, lifetime: dt.timedelta = CONTROL_LIFETIME) -> Path:
    """The operator's client certificate (no SPIFFE ID: it is no workload), written 0600."""
    ca = read(*mesh_ca_paths(directory))
    cert, key = operator_paths(directory)
    write(issue(ca, OPERATOR_CN, lifetime=lifetime, server=False, client=True), cert, key)
    return cert


def ensure_operator(directory: Path, lifetime: dt.timedelta = CONTROL_LIFETIME) -> str | None:
    """Issue the operator's client certificate when it is missing, from another CA, or past half
    its life; returns why it was issued, or None when it was kept."""
    ca = read(*mesh_ca_paths(directory))
    cert_path, key_path = operator_paths(directory)
    why = None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if not key_path.exists():
            why = "key is missing"
        elif _now() >= start + (end - start) / 2:
            why = "past half its life"
    except OSError:
        why = "missing"
    except (ValueError, TypeError, InvalidSignature):
        why = "signed by another CA"
    if why:
        issue_operator(directory, lifetime)
    return why


def renewal_due(cert: x509.Certificate, identity: str, ca: x509.Certificate,
                lifetime: dt.timedelta, renew_after: float, now: dt.datetime | None = None) -> str | None:
    """Why this certificate must be replaced now, or None while it is good."""
    now = now or _now()
    if spiffe_of(cert) != identity:
        return f"identity is {spiffe_of(cert)}, expected {identity}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "signed by another CA"
    issued = cert.not_valid_before_utc + SKEW
    end = cert.not_valid_after_utc
    if end - issued > lifetime + dt.timedelta(seconds=1):
        return f"lifetime {end - issued} is longer than the configured {lifetime}"
    if now >= issued + (end - issued) * renew_after:
        return "past its renewal point" if now < end else "expired"
    return None


def renew_due(directory: Path, identities: dict[str, str], lifetime: dt.timedelta = DEFAULT_LIFETIME,
              renew_after: float = 0.5, now: dt.datetime | None = None) -> list[tuple[str, str]]:
    """Issue or renew every workload certificate that is missing or due: [(name, why)]."""
    ca = read(*mesh_ca_paths(directory))
    done = []
    for name, identity in identities.items():
        cert_path, key_path = workload_paths(directory, name)
        why: str | None
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            why = renewal_due(cert, identity, ca.cert, lifetime, renew_after, now) \
                if key_path.exists() else "key is missing"
        except (OSError, ValueError):
            why = "missing"
        if why:
            issue_workload(directory, name, identity, lifetime)
            done.append((name, why))
    return done


def describe(cert_path: Path, now: dt.datetime | None = None) -> dict:
    """What `mitmesh certs show` prints about one certificate file."""
    now = now or _now()
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    end = cert.not_valid_after_utc
    key_path = cert_path.with_suffix(".key")
    mode = oct(key_path.stat().st_mode & 0o777) if key_path.exists() else None
    return {
        "file": str(cert_path),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "spiffe_id": spiffe_of(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": end.isoformat(),
        "expires_in_s": int((end - now).total_seconds()),
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "key_mode": mode,
    }
