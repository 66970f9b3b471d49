"""Mutual TLS to a real etcd as mitmesh starts it: a workload certificate of the mesh CA reads and
writes; plain http, TLS without a client certificate, a certificate of another CA, and a member
checked against the wrong CA are refused. The client follows a renewed certificate."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request

import pytest

from discovery.etcdapi import Etcd, EtcdError
from discovery.etcdtls import EtcdTls
from mesh.security import pki
from tests.etcd_server import etcd_server, workload_tls  # noqa: F401 (fixture)


def other_ca(tmp_path) -> EtcdTls:
    """A workload certificate with the right name from a CA etcd does not trust."""
    directory = tmp_path / "other"
    pki.init_mesh(directory, "mitmesh.local")
    spiffe = pki.spiffe_id("mitmesh.local", "demo", "catalog")
    cert = pki.issue_workload(directory, "catalog", spiffe)
    return EtcdTls(str(pki.mesh_ca_cert(directory)), str(cert), str(cert.with_suffix(".key")))


async def test_a_workload_certificate_reads_and_writes(etcd_server):
    assert etcd_server.client_url.startswith("https://127.0.0.1:")
    etcd = Etcd([etcd_server.client_url], tls=workload_tls(etcd_server, "catalog"))
    try:
        await etcd.put("/mitmesh/t/x", "1")
        assert (await etcd.get("/mitmesh/t/x")).value == "1"
    finally:
        await etcd.close()


async def test_plain_http_is_refused(etcd_server):
    etcd = Etcd([f"http://127.0.0.1:{etcd_server.client_port}"], timeout=2)
    try:
        with pytest.raises(EtcdError):
            await etcd.get("/mitmesh/t/x")
    finally:
        await etcd.close()


def test_tls_without_a_client_certificate_is_refused(etcd_server):
    """Verifying the member is not enough: etcd asks for a client certificate and gets none."""
    context = ssl.create_default_context(cafile=str(pki.mesh_ca_cert(etcd_server.certs)))
    req = urllib.request.Request(f"{etcd_server.client_url}/v3/kv/range", data=b'{"key": "Lw=="}')
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        with urllib.request.urlopen(req, timeout=5, context=context) as r:
            json.load(r)


async def test_a_certificate_of_another_ca_is_refused(etcd_server, tmp_path):
    rogue = other_ca(tmp_path)
    # it trusts the real mesh CA, so only its own certificate can be what is refused
    etcd = Etcd([etcd_server.client_url], tls=EtcdTls(str(pki.mesh_ca_cert(etcd_server.certs)),
                                                      rogue.cert, rogue.key))
    try:
        with pytest.raises(EtcdError):
            await etcd.put("/mitmesh/t/instances/catalog/v1/10.0.0.1:80", "{}")
    finally:
        await etcd.close()
    check = Etcd([etcd_server.client_url], tls=workload_tls(etcd_server, "gateway"))
    try:
        assert await check.get("/mitmesh/t/instances/catalog/v1/10.0.0.1:80") is None
    finally:
        await check.close()


async def test_a_member_of_another_ca_is_not_trusted(etcd_server, tmp_path):
    """The client checks the member too: trusting another CA, it will not talk to this etcd."""
    mine = workload_tls(etcd_server, "catalog")
    etcd = Etcd([etcd_server.client_url], tls=EtcdTls(other_ca(tmp_path).ca, mine.cert, mine.key))
    try:
        with pytest.raises(EtcdError, match="certificate verify failed"):
            await etcd.get("/mitmesh/t/x")
    finally:
        await etcd.close()


@pytest.mark.parametrize("which, error", [
    ("ca", "etcd TLS: ca: no such file (got '{}')"),
    ("cert", "etcd TLS: cert: no such file (got '{}')"),
    ("key", "etcd TLS: key: no such file (got '{}')"),
])
def test_a_missing_file_is_named(tmp_path, which, error):
    tls = other_ca(tmp_path)
    missing = str(tmp_path / "nope.pem")
    tls = EtcdTls(**{"ca": tls.ca, "cert": tls.cert, "key": tls.key, which: missing})
    with pytest.raises(ValueError) as e:
        tls.context()
    assert str(e.value) == error.format(missing)


def test_a_renewed_certificate_is_used_for_new_connections(tmp_path):
    tls = other_ca(tmp_path)
    first = tls.context()
    assert tls.context() is first  # nothing changed: the same context
    spiffe = pki.spiffe_id("mitmesh.local", "demo", "catalog")
    cert = pki.issue_workload(tmp_path / "other", "catalog", spiffe)
    os.utime(cert, ns=(1, 1))  # a renewal within the same mtime tick is still a change of inode
    assert tls.context() is not first


async def test_junk_under_revisions_stops_neither_history_nor_push(etcd_server):
    """Any holder of a mesh certificate can write under revisions/ (etcd checks only the CA): a
    record that is no revision, at the next number or far beyond, is left out of the history and
    numbered past, where it broke `mitmesh config history`, `push` and `rollout`."""
    from mesh.runtime.store import Store, current_key, revision_key
    from mesh.security.signing import Signer
    from tests.etcd_server import operator_tls

    rogue = Etcd([etcd_server.client_url], tls=workload_tls(etcd_server, "catalog"))
    tls = operator_tls(etcd_server)
    operator = Etcd([etcd_server.client_url], tls=tls)
    store = Store(operator, "junk", Signer.load(tls.cert, tls.key))
    try:
        first = await store.push("version: 1\n", "mesh.yaml")
        await rogue.put(revision_key("junk", 2), "not a revision")
        await rogue.put(revision_key("junk", 9_999_999_999), json.dumps({"revision": "x"}))
        assert [r.revision for r in await store.history()] == [first.revision]
        second = await store.push("version: 1\n# again\n", "mesh.yaml")
        assert second.revision == 10_000_000_000
        assert [r.revision for r in await store.history()] == [first.revision, second.revision]
        await rogue.put(current_key("junk"), "[not a selection")
        assert await store.current() == {}  # no selection: the next push selects
        third = await store.push("version: 1\n# third\n", "mesh.yaml")
        assert (await store.current())["revision"] == third.revision
    finally:
        await rogue.close()
        await operator.close()


def test_rolling_back_to_junk_is_refused_with_a_reason(etcd_server):
    """`mitmesh config rollback N` where N is a record someone wrote around `mitmesh config`: the
    command's error, not a traceback."""
    import argparse
    import asyncio

    from mesh.config.errors import CommandError
    from mesh.runtime import configcmd
    from mesh.runtime.store import revision_key
    from tests.etcd_server import operator_tls

    async def write_junk() -> None:
        rogue = Etcd([etcd_server.client_url], tls=workload_tls(etcd_server, "catalog"))
        try:
            await rogue.put(revision_key("junk", 1), "not a revision")
        finally:
            await rogue.close()
    asyncio.run(write_junk())
    tls = operator_tls(etcd_server)
    args = argparse.Namespace(store=etcd_server.store("junk"), revision=1, cacert=tls.ca,
                              cert=tls.cert, key=tls.key)
    with pytest.raises(CommandError, match="revision 1 is no revision record"):
        configcmd.rollback(args)
