"""control-plane-loss: the etcd cluster loses one member, then its quorum, then comes back.

Five hosts, each a Linux network namespace on one bridge (tools/netns.py): e1, e2 and e3 run a
3-member etcd cluster; edge runs the gateway, a catalog instance and the load: the instance in a
pod inside edge (isolation pod, as root: its own namespace joined to edge's bridge, as in
`partition`), or its app on the host's loopback and its sidecar on the host's address (loopback). The gateway and the sidecar read their config
from etcd (`mesh_config=etcd://e1,e2,e3/<mesh>`) and register and discover the instance there.
Under steady load: e1 is killed (one member lost), a new config revision is pushed; then e2 is
killed (quorum lost: no read or write succeeds) and the proxies keep serving their last config and
last known endpoints, flagged stale in /status, longer than the instance's lease TTL; then e1 and
e2 return and a new revision is pushed.

SLO: 100 % of the requests succeed throughout; with one member lost the proxies are not stale and
the pushed revision is applied within 10 s; with quorum lost both the config and the discovery
source are flagged stale within 15 s and the catalog instance stays in the registry; after the
return nothing is stale within 30 s and the next revision is applied without a restart. Needs root
and `ip` (iproute2): without them the scenario is skipped (exit 77) and says why.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.request

import yaml

from mesh.runtime import procs
from mesh.config import load as load_config
from mesh.security import pki
from tools import certcmd, etcdserver
from tools.scenario import Report, Run, main
from tools.testbed import Load, wait_until

from . import _hosts

TITLE = "the etcd cluster loses one member, then its quorum, then comes back: proxies serve throughout"
GATEWAY, GATEWAY_ADMIN, ADMIN, APP, CLIENT, PEER = 8080, 9901, 15000, 8000, 2379, 2380
TTL = 3  # the instance's lease


def run(r: Run) -> Report:
    step, lost_for = r.pick(5.0, 2.0), r.pick(10.0, 5.0)
    rate = 50
    with _hosts.hosts(r, ["e1", "e2", "e3", "edge"], subnet="10.79.0", tag="mmcp") as hosts:
        return _run(r, hosts, step, lost_for, rate)


def _run(r: Run, hosts: _hosts.Hosts, step: float, lost_for: float, rate: int) -> Report:
    net = hosts.net
    edge, mesh_id = net.address("edge"), f"s-{secrets.token_hex(4)}"
    # mutual TLS between the members, and to them, as `mitmesh up --control-plane etcd`: the mesh
    # CA (certs/ beside mesh.yaml) signs each member's certificate for its address, the proxies'
    # workload certificates and the operator's, with which `push` stores each revision
    certs = r.workdir / "certs"
    pki.init_mesh(certs, "mitmesh.local")
    pki.ensure_operator(certs)
    cert, key = pki.operator_paths(certs)
    operator = ["--cacert", str(pki.mesh_ca_cert(certs)), "--cert", str(cert), "--key", str(key)]
    members = [etcdserver.Member(h, net.address(h), CLIENT, PEER, certs=certs)
               for h in ("e1", "e2", "e3")]

    def member(m: etcdserver.Member) -> None:
        m.child = hosts.spawn(m.name, f"etcd-{m.name}", etcdserver.argv(m, members, r.workdir / "etcd"))

    for m in members:
        member(m)
    r.say("hosts (namespaces on one bridge): " + ", ".join(f"{m.name} {m.host} (etcd)" for m in members)
          + f", edge {edge} (gateway, catalog, load)")
    store = "etcds://" + ",".join(f"{m.host}:{CLIENT}" for m in members) + f"/{mesh_id}"
    config = {
        "version": 1, "mesh": {"id": mesh_id},
        "gateway": {"listeners": [{"name": "public", "address": edge, "port": GATEWAY}],
                    "admin": {"address": edge, "port": GATEWAY_ADMIN}},
        "discovery": {"etcd": {"endpoints": [f"{m.host}:{CLIENT}" for m in members], "ttl": TTL,
                               "tls": {}}},
        "sidecar": {"admin": {"port": ADMIN}, "drain": "100ms"},
        "services": {"catalog": {"versions": {"v1": {}}}},
        "routes": [{"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
                    "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}}],
    }
    path = r.workdir / "mesh.yaml"

    def push(note: str) -> int | None:
        config["routes"][1:] = [{"name": "note", "match": {"path": {"exact": "/note"}}, "direct": {"body": {"note": note}}}]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        out = subprocess.run(net.argv("edge", procs.python("-m", "mesh.cli", "config", "push", str(path),
                                                           "--store", store, *operator)),
                             capture_output=True, text=True, timeout=60).stdout
        found = [int(w) for w in out.replace("\n", " ").split("revision ")[1:2][0].split()[:1]] if "revision " in out else []
        return found[0] if found else None

    r.say("waiting for the etcd cluster to elect a leader, then pushing revision 1")
    wait_until(lambda: push("first") == 1, timeout=30, interval=1.0)
    certcmd.rotate(certs, load_config(path))  # the gateway's and catalog's workload certificates
    sc = load_config(path).sidecar
    # the instance's address: edge's, or its pod's inside edge
    at, app, sidecar, pod = hosts.catalog("edge", "catalog-1", store, r.workdir / "pods",
                                          (APP, sc.inbound.port, sc.outbound.port, ADMIN), config["services"])
    if pod is not None:
        r.say(f"catalog-1 in pod {pod.netns} inside edge, on {at}")
    gateway = hosts.spawn("edge", "gateway",
                          procs.python("-m", "mesh.cli", "gateway", "--config", store, "--workers", "1"))
    for child, ready, said in ((app, "listening on", "listens"), (sidecar, "announced ", "registered its instance"),
                               (gateway, "gateway ready", "serves")):
        procs.wait_log(child, ready, timeout=60)
        r.say(f"{child.name} {said}")

    def status() -> dict:
        return net.call("edge", lambda: json.load(urllib.request.urlopen(
            f"http://{edge}:{GATEWAY_ADMIN}/status", timeout=2)))

    def cp() -> dict:
        return status()["control_plane"]

    def known() -> list[str]:
        return [i["workload"] for i in status()["registry"]["instances"] if i["source"] == "etcd"]

    r.say("waiting for the gateway to find the 1 instance over etcd")
    wait_until(lambda: known() == ["catalog-1"], timeout=15)
    r.say("the gateway knows the 1 instances")
    watched = hosts.watch({"gateway": (f"http://{edge}:{GATEWAY_ADMIN}", "edge"),
                           "catalog-1": (f"http://{at}:{ADMIN}", "edge")})
    load = Load(f"http://{edge}:{GATEWAY}/catalog/items/1", threads=4, rate=rate, netns=net.name("edge")).start()
    r.say(f"load from edge: {rate} req/s; e1 killed at {step:g} s, e2 {step:g} s later, both back {lost_for:g} s later")
    marks: dict[str, float] = {}
    seen: dict[str, object] = {}
    try:
        time.sleep(step)
        members[0].child.kill()
        marks["one lost"] = time.time()
        r.say("e1 killed: 2 of 3 members left")
        seen["rev2"] = push("second")
        seen["rev2 applied"] = _within(lambda: cp()["config"]["revision"] == seen["rev2"], 10)
        time.sleep(max(marks["one lost"] + step - time.time(), 0))
        seen["stale with 2 of 3"] = cp()["stale"]
        members[1].child.kill()
        marks["quorum lost"] = time.time()
        r.say("e2 killed: 1 of 3, no quorum")
        seen["flagged after"] = _within(lambda: cp()["config"]["stale"] and cp()["discovery"]["stale"], 15)
        time.sleep(max(marks["quorum lost"] + lost_for - time.time(), 0))
        seen["known while lost"] = known()
        seen["serving revision while lost"] = cp()["config"]["revision"]
        for m in members[:2]:
            member(m)
        marks["back"] = time.time()
        r.say("e1 and e2 restarted")
        seen["fresh after"] = _within(lambda: not cp()["stale"], 30)
        seen["rev3"] = None
        seen["rev3 applied"] = _within(lambda: (seen.__setitem__("rev3", seen["rev3"] or push("third")) or True)
                                       and cp()["config"]["revision"] == seen["rev3"], 20, interval=1.0)
        seen["known after"] = known()
        time.sleep(step / 2)
    finally:
        samples = load.stop()
        watched.stop()

    report = Report("control-plane-loss", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = (f"3-member etcd on e1, e2, e3; on edge a gateway (1 worker) and catalog-1 with its sidecar"
                   + (f" (in a pod inside edge, {at})" if at != edge else "") + ", "
                   f"config and discovery from etcd (lease TTL {TTL} s); mesh id {mesh_id}")
    report.load = f"GET /catalog/items/1 through the gateway from edge, {rate} req/s on 4 connections"
    report.fault = (f"SIGKILL of etcd on e1 at {marks['one lost'] - load.started:.1f} s, on e2 at "
                    f"{marks['quorum lost'] - load.started:.1f} s; both restarted at {marks['back'] - load.started:.1f} s")
    report.slo = ("100 % succeed; 1 member lost: not stale, a push applied within 10 s; quorum lost: config "
                  "and discovery stale within 15 s, the instance still known; back: fresh within 30 s, a push applied")
    report.phases = [("all members", load.started, marks["one lost"]),
                     ("one member lost", marks["one lost"], marks["quorum lost"]),
                     ("quorum lost", marks["quorum lost"], marks["back"]),
                     ("members back", marks["back"], float("inf"))]
    secs = lambda v: "never" if v is None else f"{v:.1f} s"  # noqa: E731
    report.figure("revision 2 (pushed with 2 of 3 members) applied, after the push returned", secs(seen["rev2 applied"]))
    report.figure("stale flagged after quorum loss", secs(seen["flagged after"]))
    report.figure("instances known while quorum lost", ", ".join(seen["known while lost"]) or "none")
    report.figure("fresh again after the members' return", secs(seen["fresh after"]))
    report.figure("revision 3 (pushed after the return) applied, from the first try", secs(seen["rev3 applied"]))
    report.check_success("100 % of all requests succeed", samples)
    report.check_success("100 % succeed while quorum is lost",
                         report.during(marks["quorum lost"], marks["back"]))
    report.check("one member lost: revision 2 applied within 10 s, not stale",
                 seen["rev2 applied"] is not None and seen["stale with 2 of 3"] is False,
                 f"applied after {secs(seen['rev2 applied'])}, stale {seen['stale with 2 of 3']}")
    report.check("quorum lost: config and discovery flagged stale within 15 s", seen["flagged after"] is not None,
                 secs(seen["flagged after"]))
    report.check("quorum lost: last config and last known endpoints kept",
                 seen["known while lost"] == ["catalog-1"] and seen["serving revision while lost"] == seen["rev2"],
                 f"revision {seen['serving revision while lost']}, instances {seen['known while lost']}")
    report.check("back: not stale within 30 s, revision 3 applied without a restart",
                 seen["fresh after"] is not None and seen["rev3 applied"] is not None
                 and gateway.alive() and sidecar.alive() and seen["known after"] == ["catalog-1"],
                 f"fresh after {secs(seen['fresh after'])}, revision 3 after {secs(seen['rev3 applied'])}")
    return report


def _within(predicate, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until `predicate` held, or None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start <= timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(interval)
    return None


if __name__ == "__main__":
    sys.exit(main("control-plane-loss"))
