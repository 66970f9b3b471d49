"""`mitmesh certs …` and `mitmesh apikey new`, run in-process through the real argument parser."""

from __future__ import annotations

import re
import stat

from mesh.policies import apikeys
from mesh import cli
from mesh.security import pki
from tests.conftest import BASE, dedent


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_init_issue_show_rotate(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./mesh.yaml: defaults
    code, out = run(capsys, "certs", "init")
    assert code == 0 and out.splitlines() == [
        "wrote certs/edge-ca.pem", "wrote certs/edge.pem", "wrote certs/mesh-ca.pem", "wrote certs/admin.token"]
    for secret, mode in (("admin.token", 0o600), ("ca", 0o700), ("ca/mesh-ca.key", 0o600), ("ca/edge-ca.key", 0o600)):
        assert stat.S_IMODE((tmp_path / "certs" / secret).stat().st_mode) == mode, secret
    token = (tmp_path / "certs/admin.token").read_text()
    assert run(capsys, "certs", "init")[1].startswith("certificates in certs are present")
    assert (tmp_path / "certs/admin.token").read_text() == token  # kept
    code, out = run(capsys, "certs", "issue", "orders", "--lifetime", "1h")
    assert out == "wrote certs/workload/orders.pem for spiffe://mitmesh.local/ns/demo/sa/orders\n"
    assert stat.S_IMODE((tmp_path / "certs/workload/orders.key").stat().st_mode) == 0o600
    code, out = run(capsys, "certs", "show", "orders")
    assert re.match(r"certs/workload/orders.pem: spiffe://mitmesh.local/ns/demo/sa/orders  expires \S+ "
                    r"\(in 3[56]\d\ds\)  key 0o600  sha256 [0-9a-f]{16}…\n$", out), out

    (tmp_path / "mesh.yaml").write_text(dedent(BASE) + "mesh: {trust_domain: shop.test, namespace: prod}\n")
    code, out = run(capsys, "certs", "rotate")
    assert code == 0, out
    assert sorted(out.splitlines()) == ["renewed workload certificate catalog (missing)",
                                        "renewed workload certificate gateway (missing)",
                                        "renewed workload certificate users (missing)"]
    (tmp_path / "mesh.yaml").write_text(dedent(BASE).replace("  users:", "  orders:\n    versions: "
                                        "{v1: {endpoints: ['127.0.0.1:9']}}\n  users:")
                                        + "mesh: {trust_domain: shop.test, namespace: prod}\n")
    assert run(capsys, "certs", "rotate", "orders")[1] == (
        "renewed workload certificate orders (identity is spiffe://mitmesh.local/ns/demo/sa/orders, "
        "expected spiffe://shop.test/ns/prod/sa/orders)\n")
    assert run(capsys, "certs", "rotate")[1] == ""  # nothing due
    assert pki.describe(tmp_path / "certs/workload/users.pem")["spiffe_id"] == "spiffe://shop.test/ns/prod/sa/users"


def test_apikey_new(capsys):
    code, out = run(capsys, "apikey", "new", "acme")
    key = out.splitlines()[1].strip()
    assert key.startswith("mk_") and len(key) > 40
    assert out.splitlines()[3] == f"  acme: {{key_sha256: {apikeys.digest(key)}}}"


def test_operator_certificate(tmp_path, capsys, monkeypatch):
    """`mitmesh certs operator`: a client-only certificate of the mesh CA for `mitmesh config`;
    `mitmesh up --control-plane etcd` keeps one (ensure_operator) until past half its life."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "certs", "operator", "--lifetime", "2h")
    wrote = "wrote certs/operator.pem (CN 'mitmesh operator', client only"
    assert code == 0 and out.startswith(wrote), out
    cert = x509.load_pem_x509_certificate((tmp_path / "certs/operator.pem").read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH] and pki.spiffe_of(cert) is None
    cert.verify_directly_issued_by(pki.read(*pki.mesh_ca_paths(tmp_path / "certs")).cert)
    assert stat.S_IMODE((tmp_path / "certs/operator.key").stat().st_mode) == 0o600
    assert pki.ensure_operator(tmp_path / "certs") is None  # kept: fresh, from this CA
    pki.init_mesh(tmp_path / "certs", "mitmesh.local", force=True)
    assert pki.ensure_operator(tmp_path / "certs") == "signed by another CA"
    assert "certs/operator.pem: CN=mitmesh operator" in run(capsys, "certs", "show")[1]
