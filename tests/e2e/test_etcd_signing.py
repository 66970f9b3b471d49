"""Signed revisions with a real etcd serving mutual TLS and a real gateway: any workload
certificate of the mesh CA may write to etcd, but the gateway runs only what the operator's
certificate signed. A workload's revision (signed with its own key, or unsigned), a signed
revision whose text was changed, and one signed by another CA's operator are refused and the old
config keeps serving (as after junk in the selection); a gateway starting on one exits saying
why; the operator's is applied."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
import sys
import time

import yaml

from discovery.etcdapi import Etcd
from discovery.etcdtls import EtcdTls
from mesh.runtime import procs
from mesh.runtime.store import Revision, Store, current_key, revision_key
from mesh.security import pki
from mesh.security.signing import Signer
from tests.etcd_server import etcd_server, mesh_certs, operator_tls, workload_tls  # noqa: F401
from tools import etcdserver

from .conftest import Mesh, get, wait_until

MESH = "signtest"


def mitmesh(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def config(answer: str) -> dict:
    """A valid config whose one route answers `answer`: which revision runs shows in a reply."""
    p = procs.free_port
    return {"version": 1, "mesh": {"id": MESH},
            "gateway": {"listeners": [{"name": "public", "port": p()}], "admin": {"port": p()}},
            "services": {},
            "routes": [{"name": "which", "match": {"path": {"exact": "/which"}},
                        "direct": {"status": 200, "body": {"revision": answer}}}]}


def revision(n: int, answer: str, base: dict, signer: Signer | None) -> Revision:
    text = yaml.safe_dump({**base, "routes": config(answer)["routes"]})
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    rev = Revision(n, text, digest, "mesh.yaml", time.time())
    return rev.signed(MESH, signer) if signer is not None else rev


def store_and_select(member, tls: EtcdTls, rev: Revision) -> None:
    """What anyone holding a certificate of the mesh CA can do, around `mitmesh config`: write
    `rev` over a revision the operator selected (the operator's signed selection of its number,
    as after the operator's push of that number)."""
    operator = Signer.load(*pki.operator_paths(member.certs))

    async def write():
        etcd = Etcd([member.client_url], tls=tls)
        try:
            await etcd.put(revision_key(MESH, rev.revision), rev.to_json())
            await Store(etcd, MESH, operator).set_current({"revision": rev.revision},
                                                          rev.revision)
        finally:
            await etcd.close()
    asyncio.run(write())


def select(member, tls: EtcdTls, selection: dict) -> None:
    async def write():
        etcd = Etcd([member.client_url], tls=tls)
        try:
            await etcd.put(current_key(MESH), json.dumps(selection))
        finally:
            await etcd.close()
    asyncio.run(write())


def selection(member) -> dict:
    async def read():
        etcd = Etcd([member.client_url], tls=operator_tls(member))
        try:
            return json.loads((await etcd.get(current_key(MESH))).value)
        finally:
            await etcd.close()
    return asyncio.run(read())


def test_a_gateway_runs_only_what_the_operator_signed(tmp_path, etcd_server):
    store = f"etcds://127.0.0.1:{etcd_server.client_port}/{MESH}"
    workload = workload_tls(etcd_server, "gateway")  # the gateway's, and the attacker's
    base = config("1")
    m = Mesh(tmp_path, base)
    m.write()

    def control() -> dict:
        return m.status()["control_plane"]["config"]

    def refused(n: int, why: str) -> None:
        wait_until(lambda: control()["wanted"] == n and control()["refused"], timeout=20)
        got = control()
        assert got["revision"] == 1 and f"revision {n} not applied, still running 1" in \
            got["refused"] and why in got["refused"], got
        assert why in m.status()["config"]["last_error"]
        assert get(m.url + "/which")[1] == {"revision": "1"}

    try:
        r = mitmesh("config", "push", str(m.path), "--store", store, cwd=tmp_path)
        assert r.returncode == 0 and "revision 1 " in r.stdout, r
        first = selection(etcd_server)  # the operator's signed selection of revision 1
        m.children["gateway"] = gw = procs.spawn(
            "gateway", procs.python("-m", "mesh.cli", "gateway", "--workers", "1", "--config",
                                    store), log_dir=tmp_path / "logs", cwd=str(tmp_path))
        procs.wait_log(gw, "gateway ready", timeout=60)
        assert get(m.url + "/which")[1] == {"revision": "1"}

        # a workload signs with its own key: its certificate chains to the same CA, but is no
        # operator's
        spiffe = pki.spiffe_id("mitmesh.local", "demo", "gateway")
        own = Signer.load(workload.cert, workload.key)
        store_and_select(etcd_server, workload, revision(2, "2", base, own))
        refused(2, f"mesh.yaml@r2: not signed by the operator, refused: it is a workload "
                   f"certificate ({spiffe}), not the operator's")
        # or signs nothing
        store_and_select(etcd_server, workload, revision(3, "3", base, None))
        refused(3, "mesh.yaml@r3: not signed by the operator, refused: it is not signed")
        # the operator's signature, over another text
        operator = Signer.load(*pki.operator_paths(etcd_server.certs))
        signed = revision(4, "4", base, operator)
        tampered = dataclasses.replace(signed, text=signed.text.replace("'4'", "'4b'"))
        assert tampered.text != signed.text
        store_and_select(etcd_server, workload, tampered)
        refused(4, "the signature does not match its content")
        # the operator of another mesh CA
        rogue = mesh_certs(tmp_path / "rogue")
        store_and_select(etcd_server, workload,
                         revision(5, "5", base, Signer.load(*pki.operator_paths(rogue))))
        refused(5, "its certificate (CN=mitmesh operator) is not issued by the mesh CA")

        # `mitmesh config push` will not sign with a workload certificate either
        r = mitmesh("config", "push", str(m.path), "--store", store, "--cert", workload.cert,
                    "--key", workload.key, cwd=tmp_path)
        assert r.returncode == 2 and "proxies refuse revisions this signs: it is a workload" \
            in r.stderr, r
        r = mitmesh("config", "rollback", "3", "--store", store, cwd=tmp_path)
        assert r.returncode == 2 and "mesh.yaml@r3: not signed by the operator" in r.stderr, r
        r = mitmesh("config", "history", "--store", store, cwd=tmp_path)
        marked = [line.split()[0] for line in r.stdout.splitlines()
                  if "proxies refuse it: no valid operator signature" in line]
        assert marked == ["2", "3", "4", "*"], r.stdout  # 5 is current, and refused

        # a gateway starting while a refused revision is selected exits and says why
        r = mitmesh("gateway", "--workers", "1", "--config", store, cwd=tmp_path)
        assert r.returncode == 1 and "not issued by the mesh CA" in r.stderr, r

        # junk where the selection belongs is refused too, and the watch goes on
        async def junk():
            etcd = Etcd([etcd_server.client_url], tls=workload)
            try:
                await etcd.put(current_key(MESH), "{not json")
            finally:
                await etcd.close()
        asyncio.run(junk())
        wait_until(lambda: "selection refused, still running 1" in
                   (m.status()["config"]["last_error"] or ""), timeout=20)
        assert get(m.url + "/which")[1] == {"revision": "1"}

        # the operator's push is applied
        m.write(config("6") | {"gateway": base["gateway"]})
        r = mitmesh("config", "push", str(m.path), "--store", store, cwd=tmp_path)
        assert r.returncode == 0 and "revision 6 " in r.stdout, r
        wait_until(lambda: control()["revision"] == 6, timeout=20)
        assert get(m.url + "/which")[1] == {"revision": "6"}
        assert control()["refused"] is None
        sixth = selection(etcd_server)

        # the selection is the operator's too: a workload cannot select an older revision the
        # operator signed (1, whose route has no fix of 6's, say) ...
        select(etcd_server, workload, {"revision": 1})
        wait_until(lambda: "selection refused, still running 6: the selection is not signed "
                   "by the operator" in (m.status()["config"]["last_error"] or ""), timeout=20)
        # ... nor replay the operator's own older selection, of revision 1: 6 is newer
        select(etcd_server, workload, first)
        wait_until(lambda: "selection refused, still running 6: the selection was made when "
                   "revision 1 was the latest, but the operator has since stored revision 6" in
                   (m.status()["config"]["last_error"] or ""), timeout=20)
        assert control()["revision"] == 6 and get(m.url + "/which")[1] == {"revision": "6"}
        r = mitmesh("config", "history", "--store", store, cwd=tmp_path)
        assert "proxies refuse the selection marked *: the selection was made when revision 1" \
            in r.stdout, r.stdout
        r = mitmesh("gateway", "--workers", "1", "--config", store, cwd=tmp_path)
        assert r.returncode == 1 and "since stored revision 6" in r.stderr, r
        select(etcd_server, workload, sixth)  # the operator's latest, written again: no harm
        r = mitmesh("config", "history", "--store", store, cwd=tmp_path)
        assert r.returncode == 0 and "proxies refuse the selection" not in r.stdout, r.stdout

        # a workload that deletes every newer revision makes the old selection look current to a
        # proxy that starts; this host kept the newest selection it followed, so a restarted
        # gateway refuses it still (as TUF clients keep the metadata they trusted last)
        gw.stop()

        async def erase() -> None:
            etcd = Etcd([etcd_server.client_url], tls=workload)
            try:
                for n in range(2, 7):
                    await etcd.delete(revision_key(MESH, n))
                await etcd.put(current_key(MESH), json.dumps(first))
            finally:
                await etcd.close()
        asyncio.run(erase())
        r = mitmesh("gateway", "--workers", "1", "--config", store, cwd=tmp_path)
        assert r.returncode == 1 and "the selection was made before the one this host followed " \
            "last (latest revision 6" in r.stderr, r
    finally:
        m.stop()


def test_up_pushes_again_a_revision_stored_unsigned(tmp_path):
    certs = mesh_certs(tmp_path / "certs")
    text = yaml.safe_dump(config("1"))
    port = procs.free_port()

    def up_and(work):
        member, _ = etcdserver.control_plane(tmp_path / "etcd", tmp_path / "logs", certs, text,
                                             "mesh.yaml", MESH, port)
        try:
            async def run():
                etcd = Etcd([member.client_url], tls=operator_tls(member))
                try:
                    return await work(member, Store(etcd, MESH))
                finally:
                    await etcd.close()
            return asyncio.run(run())
        finally:
            member.child.stop()

    async def unsigned_copy(member, store: Store):  # as a store from before signing holds it
        first = (await store.history())[-1]
        assert first.revision == 1 and first.signature and first.certificate
        unsigned = dataclasses.replace(first, revision=2, signature="", certificate="")
        await store.etcd.put(revision_key(MESH, 2), unsigned.to_json())
        await store.set_current({"revision": 2}, 2)  # unsigned, as before signing

    async def history(member, store: Store):
        return await store.history(), await store.current()
    up_and(unsigned_copy)
    revs, current = up_and(history)
    assert [r.revision for r in revs] == [1, 2, 3] and current["revision"] == 3
    assert revs[2].text == text and revs[2].signature
    revs, current = up_and(history)  # signed and unchanged: kept
    assert len(revs) == 3
