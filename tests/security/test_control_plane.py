"""Attacks on the etcd control plane by a holder of a workload certificate of the mesh CA: etcd
lets it write every key, so whatever it writes must neither wedge a proxy's config watcher nor
crash or mislead the operator's `mitmesh config`. Each test asserts the secure behaviour."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time

import pytest
from aiohttp import web

from discovery.etcdapi import Etcd
from mesh.config.errors import CommandError
from mesh.runtime.configcmd import Rollout
from mesh.runtime.reload import EtcdWatcher
from mesh.runtime.store import (PRESENCE, PRESENCE_MAX_AGE, PresenceTrust, Revision, Store,
                                current_key, parse_location, proxy_key, revision_key,
                                signed_presence)
from mesh.security import pki
from mesh.security.signing import Signer, sign_record
from mesh.telemetry.analysis import Thresholds
from tests.etcd_server import (etcd_server, operator_flags, operator_tls,  # noqa: F401
                               workload_tls)

MESH = "cp"


def text(answer: str) -> str:
    return f"mesh: {{id: {MESH}}}\nanswer: {answer}\n"


async def write(member, tls, key: str, value: str) -> None:
    etcd = Etcd([member.client_url], tls=tls)
    try:
        await etcd.put(key, value)
    finally:
        await etcd.close()


async def operator_push(member, body: str) -> Revision:
    tls = operator_tls(member)
    etcd = Etcd([member.client_url], tls=tls)
    try:
        return await Store(etcd, MESH, Signer.load(tls.cert, tls.key)).push(body, "mesh.yaml")
    finally:
        await etcd.close()


GATEWAY = pki.spiffe_id("mitmesh.local", "demo", "gateway")


def trust(member) -> PresenceTrust:
    """Whose presence records the operator's rollout believes: the gateway's (`gateway_trust`)."""
    return PresenceTrust(str(pki.mesh_ca_cert(member.certs)), frozenset({GATEWAY}))


def signer(member, name: str) -> Signer:
    tls = workload_tls(member, name)
    return Signer.load(tls.cert, tls.key)


async def fake_gateways(member, admin: object, sign=lambda record: record, **fields) -> None:
    """Revision 1 pushed by the operator, then two 'gateways' a workload writes (aaa-fake and
    zzz-fake, presence records claiming to run revision 2, the next) with `admin` as their
    admin URL, each record as `sign` makes it."""
    attacker = workload_tls(member, "evil")
    await operator_push(member, text("one"))
    for name in ("aaa-fake", "zzz-fake"):
        fake = {"role": "gateway", "admin": admin, "proxy": name, "pid": 1, "revision": 2, **fields}
        await write(member, attacker, proxy_key(MESH, name, 1), json.dumps(sign(fake)))


def record(n: int, **fields) -> str:
    body = text("junk")
    d = {"revision": n, "text": body, "digest": hashlib.sha256(body.encode()).hexdigest()[:12],
         "file": "mesh.yaml", "pushed_at": time.time()}
    return json.dumps({**d, **fields})


# (key, value) a workload writes; the watcher must go on following the store afterwards
JUNK = {
    "selection-overflow": ("current", '{"revision": 1e999}'),
    "selection-deep": ("current", "[" * 100_000 + "]" * 100_000),
    "revision-number-overflow": ("revisions", record(7, revision=1e999)),
    "revision-text-not-text": ("revisions", record(7, text=5)),
    "revision-pushed-at-overflow": ("revisions", record(7, pushed_at=1e999)),
}


@pytest.mark.parametrize("key, value", JUNK.values(), ids=JUNK.keys())
def test_a_workloads_junk_does_not_wedge_the_config_watcher(etcd_server, key, value):
    """One write by a workload stopped the watcher for good: the next operator push (a fix)
    was never applied, and /status still said the proxy was in sync."""
    applied: list[str] = []
    refused: list[str] = []

    async def run() -> None:
        first = await operator_push(etcd_server, text("one"))
        loc = parse_location(etcd_server.store(MESH)).with_tls(workload_tls(etcd_server, "gw"))
        watcher = EtcdWatcher(loc, "gw", first, lambda t, label, digest: t,
                              applied.append, refused.append, probe_interval=0.2)
        watcher.start()
        try:
            await asyncio.wait_for(watcher.follower.synced.wait(), 10)
            attacker = workload_tls(etcd_server, "evil")
            if key == "revisions":
                await write(etcd_server, attacker, revision_key(MESH, 7), value)
                value_ = json.dumps({"revision": 7})
                await write(etcd_server, attacker, current_key(MESH), value_)
            else:
                await write(etcd_server, attacker, current_key(MESH), value)
            await asyncio.sleep(1.0)
            await operator_push(etcd_server, text("two"))
            deadline = time.monotonic() + 10
            while not applied and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            await watcher.stop()
    asyncio.run(run())
    assert applied == [text("two")], refused


def test_a_gateways_presence_is_signed_and_said_again(etcd_server, monkeypatch):
    """What a rollout believes, a real watcher writes: its record, signed with the workload
    certificate it presents to etcd, passes the operator's check, and is signed anew (a later
    `at`) before PRESENCE_MAX_AGE, so a gateway that runs for days stays counted."""
    from mesh.runtime import reload

    monkeypatch.setattr(reload, "PRESENCE_REFRESH", 0.5)

    async def run() -> list[dict]:
        first = await operator_push(etcd_server, text("one"))
        loc = parse_location(etcd_server.store(MESH)).with_tls(workload_tls(etcd_server,
                                                                            "gateway"))
        watcher = EtcdWatcher(loc, "gw-a", first, lambda t, label, digest: t, print, print,
                              lambda: {"role": "gateway", "admin": "http://127.0.0.1:9"})
        watcher.start()
        tls = operator_tls(etcd_server)
        etcd = Etcd([etcd_server.client_url], tls=tls)
        seen: list[dict] = []
        try:
            store = Store(etcd, MESH)
            deadline = time.monotonic() + 10
            while len({r.get("at") for r in seen}) < 3 and time.monotonic() < deadline:
                seen.extend(await store.proxies())
                await asyncio.sleep(0.1)
            return seen
        finally:
            await etcd.close()
            await watcher.stop()
    seen = asyncio.run(run())
    assert len({r["at"] for r in seen}) >= 3, seen
    for record in seen:
        trust(etcd_server).check(record, MESH)
        assert (record["proxy"], record["revision"], record["admin"]) == \
            ("gw-a", 1, "http://127.0.0.1:9")


def mitmesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True,
                          text=True, timeout=60)


HISTORY_JUNK = {
    "pushed-at-overflow": record(2, pushed_at=1e999),
    "text-not-text": record(2, text=5),
    "revision-overflow": record(2, revision=1e999),
}


@pytest.mark.parametrize("value", HISTORY_JUNK.values(), ids=HISTORY_JUNK.keys())
def test_a_workloads_revision_record_does_not_crash_history(etcd_server, value):
    """`mitmesh config history` is how the operator sees what runs; a record written around it
    ended it in a traceback."""
    asyncio.run(operator_push(etcd_server, text("one")))
    attacker = workload_tls(etcd_server, "evil")
    asyncio.run(write(etcd_server, attacker, revision_key(MESH, 2), value))
    r = mitmesh("config", "history", "--store", etcd_server.store(MESH),
                *operator_flags(etcd_server))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "   1  " in r.stdout, r.stdout


class Args:
    canary, watch, interval, message, file = 1, 0.6, 0.2, "", "mesh.yaml"


async def operator_rollout(member) -> tuple[object, dict]:
    """The operator's `mitmesh config rollout` of text("two") as the presence records in
    `member` stand: its exit code, or the exception it ended in, and the selection after it."""
    tls = operator_tls(member)
    etcd = Etcd([member.client_url], tls=tls)
    try:
        store = Store(etcd, MESH, Signer.load(tls.cert, tls.key))
        try:
            code = await Rollout(store, Args(), Thresholds(), trust(member)).run(text("two"))
        except Exception as e:  # noqa: BLE001 (what the operator saw: an error, or a traceback)
            code = e
        return code, await store.current()
    finally:
        await etcd.close()


PRESENCE_JUNK = {
    "not-json": "{",
    "not-an-object": "[1]",
    "no-proxy-name": json.dumps({"role": "gateway", "admin": "http://127.0.0.1:1"}),
    "deep": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("value", PRESENCE_JUNK.values(), ids=PRESENCE_JUNK.keys())
def test_a_workloads_presence_record_does_not_crash_rollout(etcd_server, value):
    """Any workload may write under config/proxies/; the operator's rollout read every record
    there as a proxy's and ended in a traceback on one that is not."""
    async def run() -> object:
        await operator_push(etcd_server, text("one"))
        attacker = workload_tls(etcd_server, "evil")
        await write(etcd_server, attacker, proxy_key(MESH, "evil", 1), value)
        return (await operator_rollout(etcd_server))[0]
    code = asyncio.run(run())
    # too few gateways: a command error, as it should be
    assert isinstance(code, CommandError) and "gateway(s) read this store" in str(code), code


def old_record(member, record: dict) -> dict:
    """A gateway's own record, signed by it long ago: kept by a workload, written again."""
    said = {**record, "at": time.time() - PRESENCE_MAX_AGE - 60}
    gateway = signer(member, "gateway")
    return sign_record(PRESENCE, MESH, said, gateway)


FORGERIES = {  # how a workload makes up a gateway's presence record
    "unsigned": lambda member, record: record,
    "signed-by-the-workload": lambda member, record: signed_presence(MESH, record,
                                                                     signer(member, "evil")),
    "a-gateways-record-with-another-admin-url": lambda member, record: {
        **signed_presence(MESH, {**record, "admin": "http://127.0.0.1:1"},
                          signer(member, "gateway")), "admin": record["admin"]},
    "a-gateways-old-record": old_record,
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_fake_presence_record_cannot_steer_a_rollout(etcd_server, forge):
    """`mitmesh config rollout` takes the gateways, the revision they run and the admin URL it
    reads their metrics from out of presence records that any workload may write. A workload
    that registered two 'gateways' with its own admin URL was the canary and the baseline: the
    operator's CLI fetched the attacker's URL and promoted a revision no gateway ever ran. Now
    it believes only records a gateway signed, lately."""
    hits: list[str] = []
    count = {"n": 0}

    async def metrics(request: web.Request) -> web.Response:
        hits.append(str(request.url))
        count["n"] += 100
        body = ("# TYPE mitmesh_requests_total counter\n"
                f'mitmesh_requests_total{{code="200"}} {count["n"]}\n')
        return web.Response(text=body, content_type="text/plain")

    async def run() -> int:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        await fake_gateways(etcd_server, f"http://127.0.0.1:{port}",
                            lambda record: forge(etcd_server, record), wanted=2, refused=None)
        try:
            return (await operator_rollout(etcd_server))[0]
        finally:
            await runner.cleanup()
    code = asyncio.run(run())
    assert not hits, f"the operator's CLI fetched {hits[0]} named by a workload's record"
    assert code == 1 or isinstance(code, CommandError), \
        f"promoted a revision on the word of a workload's record ({code!r})"


def test_a_workloads_deep_instance_record_does_not_wedge_discovery(etcd_server):
    """Registering instances is open to every workload (documented); stopping every proxy from
    learning any instance after it, by one record nested too deep for json.loads, is not."""
    from discovery import Instance, Registry
    from discovery.etcd import EtcdSource

    inst = Instance(name="c1", service="catalog", version="v1", address="127.0.0.5", port=15006)
    registry = Registry()

    async def run() -> bool:
        tls = workload_tls(etcd_server, "catalog")
        watcher = EtcdSource(Etcd([etcd_server.client_url], tls=tls), "m1", ttl=3)
        announcer = EtcdSource(Etcd([etcd_server.client_url], tls=tls), "m1", ttl=3)
        try:
            await watcher.start(registry)
            await announcer.start(Registry())
            assert await watcher.wait_synced(5)
            await write(etcd_server, workload_tls(etcd_server, "evil"),
                        "/mitmesh/m1/instances/evil/v1/127.0.0.9:1", "[" * 100_000)
            await asyncio.sleep(0.5)
            await announcer.announce(inst, "catalog-1")
            deadline = time.monotonic() + 5
            while "etcd:127.0.0.5:15006" not in registry.instances:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.05)
            return True
        finally:
            for s in (announcer, watcher):
                await s.stop()
                await s.etcd.close()
    assert asyncio.run(run()), "a record nested too deep stopped the discovery watcher"


def test_a_workloads_revision_cannot_dress_up_in_history(etcd_server):
    """`history` prints every record under revisions/, a workload's too, marked 'proxies refuse
    it'. Its file name and message went to the operator's terminal as they were: a newline makes
    a line of its own (a fake current revision), an escape sequence hides the mark."""
    asyncio.run(operator_push(etcd_server, text("one")))
    fake = record(2, message="hotfix\x1b[8m", file="mesh.yaml\n*    7  0123456789ab  fake")
    asyncio.run(write(etcd_server, workload_tls(etcd_server, "evil"), revision_key(MESH, 2), fake))
    r = mitmesh("config", "history", "--store", etcd_server.store(MESH),
                *operator_flags(etcd_server))
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and len(r.stdout.splitlines()) == 3, r.stdout


SELECTION_JUNK = {
    "canary-not-object": {"revision": 1, "canary": 5},
    "canary-names-not-text": {"revision": 1, "canary": {"revision": 1, "proxies": [1]}},
    "canary-names-not-list": {"revision": 1, "canary": {"revision": 1, "proxies": 5}},
}


@pytest.mark.parametrize("value", SELECTION_JUNK.values(), ids=SELECTION_JUNK.keys())
def test_a_workloads_selection_does_not_crash_history(etcd_server, value):
    """Junk in config/current reads as no selection (1ca1fdb), junk inside its canary too."""
    asyncio.run(operator_push(etcd_server, text("one")))
    attacker = workload_tls(etcd_server, "evil")
    asyncio.run(write(etcd_server, attacker, current_key(MESH), json.dumps(value)))
    r = mitmesh("config", "history", "--store", etcd_server.store(MESH),
                *operator_flags(etcd_server))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("admin", ["http://127.0.0.1:1", "not a url", None])
def test_a_canary_that_cannot_be_measured_is_rolled_back(etcd_server, admin):
    """A gateway's admin URL that refuses (the gateway is gone), is no URL, or is missing (an
    older mitmesh, a misconfiguration) ended the rollout in a traceback after the canary was
    selected, and the canary ran the new revision, unwatched, until someone noticed."""
    async def run() -> tuple[object, dict]:
        gateway = signer(etcd_server, "gateway")  # real gateways, signed: their word, not URLs
        await fake_gateways(etcd_server, admin, lambda r: signed_presence(MESH, r, gateway))
        return await operator_rollout(etcd_server)
    code, current = asyncio.run(run())
    assert code == 1 and current["revision"] == 1 and "canary" not in current, (code, current)


def test_selecting_numbers_without_end_does_not_grow_a_proxy(etcd_server):
    """Each revision a proxy refuses is remembered, so it is not tried again; a workload that
    selected 1, 2, 3 ... (no such revision stored) grew that memory by one entry a write. A
    workload's selections are refused now (not the operator's), and the memory is capped for
    selections the operator signed too (a script gone wrong)."""
    refusals: list[str] = []

    async def run() -> tuple[int, int | None]:
        first = await operator_push(etcd_server, text("one"))
        loc = parse_location(etcd_server.store(MESH)).with_tls(workload_tls(etcd_server, "gw"))
        watcher = EtcdWatcher(loc, "gw", first, lambda t, label, digest: t,
                              lambda snap: None, refusals.append, probe_interval=0.2)
        watcher.start()
        tls = operator_tls(etcd_server)
        etcd = Etcd([etcd_server.client_url], tls=tls)
        operator = Store(etcd, MESH, Signer.load(tls.cert, tls.key))
        try:
            await asyncio.wait_for(watcher.follower.synced.wait(), 10)
            await write(etcd_server, workload_tls(etcd_server, "evil"), current_key(MESH),
                        json.dumps({"revision": 999}))
            deadline = time.monotonic() + 10
            while not refusals and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            wanted_after_workload = watcher.wanted
            for n in range(1000, 1300):
                await operator.set_current({"revision": n}, n)
            deadline = time.monotonic() + 20
            while watcher.wanted != 1299 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert watcher.wanted == 1299
            return len(watcher.refused), wanted_after_workload
        finally:
            await etcd.close()
            await watcher.stop()
    kept, wanted = asyncio.run(run())
    assert "the selection is not signed by the operator" in refusals[0] and wanted == 1, refusals
    assert kept <= 64


def test_a_proxy_does_not_go_back_to_an_older_selection(etcd_server):
    """The operator's selections are signed, so a workload can only write one the operator made
    before: one made before a newer revision was stored is refused by every proxy (the e2e
    test), and one with the same latest revision but older (the canary of a rollout the
    operator rolled back since) by a proxy that followed the newer one."""
    refusals: list[str] = []

    async def run() -> int | None:
        await operator_push(etcd_server, text("one"))
        tls = operator_tls(etcd_server)
        etcd = Etcd([etcd_server.client_url], tls=tls)
        operator = Store(etcd, MESH, Signer.load(tls.cert, tls.key))
        bad = await operator.add(text("two"), "mesh.yaml", "rollout")
        await operator.set_current({"revision": 1, "canary": {"revision": bad.revision,
                                                              "proxies": ["gw"]}}, bad.revision)
        canary = (await etcd.get(current_key(MESH))).value
        await operator.set_current({"revision": 1}, bad.revision)  # rolled back
        first = await operator.get(1)
        loc = parse_location(etcd_server.store(MESH)).with_tls(workload_tls(etcd_server, "gw"))
        watcher = EtcdWatcher(loc, "gw", first, lambda t, label, digest: t,
                              lambda snap: None, refusals.append, probe_interval=0.2)
        watcher.start()
        try:
            await asyncio.wait_for(watcher.follower.synced.wait(), 10)
            await write(etcd_server, workload_tls(etcd_server, "evil"), current_key(MESH), canary)
            deadline = time.monotonic() + 10
            while not refusals and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return watcher.wanted
        finally:
            await etcd.close()
            await watcher.stop()
    assert asyncio.run(run()) == 1
    assert refusals and "the selection was made before the one this proxy follows" in \
        refusals[0], refusals


def test_an_etcd_members_certificate_cannot_sign(tmp_path):
    """An etcd member's certificate of the mesh CA has no SPIFFE ID and is for client auth (its
    peers dial it with it): the operator's shape but for the CN, which is the member's name, free
    text in docs/howto/etcd.md. Only the server usage tells the two apart; a revision signed
    with a member's key must be refused whatever the member is named."""
    from mesh.security import pki, signing

    pki.init_mesh(tmp_path, "mitmesh.local")
    cert, key = pki.issue_etcd_member(tmp_path, pki.OPERATOR_CN, "127.0.0.1")
    member = Signer.load(cert, key)
    with pytest.raises(ValueError):
        signing.check(b"x", member.sign(b"x"), member.certificate, str(pki.mesh_ca_cert(tmp_path)))


def test_a_restarted_proxy_does_not_go_back_to_an_older_selection(etcd_server):
    """A workload deletes every revision newer than an old selection of the operator's and
    writes that selection back: nothing in the store shows it is old any more. A proxy that
    followed the newer one keeps it (store.Floor), so it refuses the old one when it starts
    again; one on a host that never followed the store (no floor) takes it, as documented."""
    import os

    from mesh.runtime.store import fetch_current
    from discovery.etcdwire import EtcdError

    async def setup() -> str:
        await operator_push(etcd_server, text("one"))
        tls = operator_tls(etcd_server)
        etcd = Etcd([etcd_server.client_url], tls=tls)
        try:
            old = (await etcd.get(current_key(MESH))).value
        finally:
            await etcd.close()
        await operator_push(etcd_server, text("two"))
        return old

    async def downgrade(old: str) -> None:
        etcd = Etcd([etcd_server.client_url], tls=workload_tls(etcd_server, "evil"))
        try:
            await etcd.delete(revision_key(MESH, 2))
            await etcd.put(current_key(MESH), old)
        finally:
            await etcd.close()
    old = asyncio.run(setup())
    loc = parse_location(etcd_server.store(MESH)).with_tls(workload_tls(etcd_server, "gw"))
    assert fetch_current(loc, "gw").revision == 2  # followed: this host keeps it
    asyncio.run(downgrade(old))
    with pytest.raises(EtcdError, match="the selection was made before the one this host "
                                        "followed last"):
        fetch_current(loc, "gw")
    os.environ["MITMESH_STATE_DIR"] += "-new-host"  # the fixture's monkeypatch restores it
    assert fetch_current(loc, "gw").revision == 1
