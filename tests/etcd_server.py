"""A real etcd (Debian's etcd-server) on free loopback ports, started per test and stopped by PID
in a finally. It serves mutual TLS as `mitmesh up` runs it: a mesh CA in <tmp_path>/certs (where
a test's mesh.yaml finds it, mesh.identity.dir's default), the operator's certificate beside it;
clients present a workload certificate (`workload_tls`) or the operator's (`operator_tls`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from discovery.etcdtls import EtcdTls
from mesh.security import pki
from tools import etcdserver


def mesh_certs(directory: Path) -> Path:
    """A mesh CA and the operator certificate in `directory`, as `mitmesh up` makes them."""
    pki.init_mesh(directory, "mitmesh.local")
    pki.ensure_operator(directory)
    return directory


def workload_tls(member: etcdserver.Member, name: str) -> EtcdTls:
    """The workload certificate of `name` (issued now, into the member's certs folder), as a
    proxy of that service presents it to etcd."""
    cert = pki.issue_workload(member.certs, name, pki.spiffe_id("mitmesh.local", "demo", name))
    return EtcdTls(str(pki.mesh_ca_cert(member.certs)), str(cert), str(cert.with_suffix(".key")))


def operator_tls(member: etcdserver.Member) -> EtcdTls:
    return EtcdTls(str(pki.mesh_ca_cert(member.certs)), *map(str, pki.operator_paths(member.certs)))


def operator_flags(member: etcdserver.Member) -> list[str]:
    """`mitmesh config ...` flags naming the operator's files."""
    tls = operator_tls(member)
    return ["--cacert", tls.ca, "--cert", tls.cert, "--key", tls.key]


@pytest.fixture
def etcd_server(tmp_path, monkeypatch):
    # the selection each proxy of the test followed last (store.Floor): the test's, not ./certs
    monkeypatch.setenv("MITMESH_STATE_DIR", str(tmp_path / "state"))
    try:
        member = etcdserver.start(tmp_path / "etcd-data", tmp_path / "logs",
                                  certs=mesh_certs(tmp_path / "certs"))
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield member
    finally:
        member.child.stop()
