"""partition: a network partition cuts the gateway's host off from one catalog host, then heals.

Four hosts, each a Linux network namespace on one bridge (tools/netns.py): `edge` runs the gateway
and the load; h1, h2 and h3 each run a catalog instance, found over mDNS on the bridge: in a pod
inside the host (isolation pod, as root: a namespace of its own joined to the host's bridge, with
an address of its own on the hosts' segment), or with its app on the host's loopback and its
sidecar on the host's address (isolation loopback). Then edge and h2 are partitioned:
every packet between them is lost silently, both ways (no refusal, no ICMP; mDNS too), while both
still reach h1 and h3. Requests on their way to h2 time out after the per-try timeout (300 ms) and
are retried on another host; outlier detection and health checks take h2 out of rotation. After
the partition heals, h2 is healthy again and back in rotation.

SLO: at least 99.9 % of the requests succeed; from 2 s after the cut until the heal every request
is answered at its first attempt (h2 is out of rotation, nobody waits for it); after the heal h2
answers requests again within 10 s. Needs root and `ip` (iproute2): without them the scenario is
skipped (exit 77) and says why.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.request

import yaml

from mesh.config import load as load_config
from mesh.runtime import procs
from tools.scenario import Report, Run, main
from tools.testbed import Load, wait_until

from . import _hosts, _mesh

TITLE = "a network partition cuts the gateway's host off from one of three catalog hosts, then heals"
INBOUND, OUTBOUND, ADMIN, APP, GATEWAY, GATEWAY_ADMIN = 15006, 15001, 15000, 8000, 8080, 9901
PER_TRY = 0.3
POLICY = {"timeout": {"request": "5s", "per_try": f"{PER_TRY * 1000:g}ms"},
          "retries": {"attempts": 3, "retry_on": ["5xx", "connect-failure", "reset"],
                      "backoff": {"base": "5ms", "max": "50ms"}}}
BACK_WITHIN = 10.0


def run(r: Run) -> Report:
    seconds, cut_at, cut_for, settle = r.pick(30.0, 9.0), r.pick(5.0, 1.5), r.pick(10.0, 4.0), 2.0
    rate = 50
    in_pods = r.isolation == "pod"  # each catalog instance in a pod inside its host
    with _hosts.hosts(r, ["edge", "h1", "h2", "h3"], subnet="10.78.0", tag="mmsc") as hosts:
        net = hosts.net
        edge = net.address("edge")
        config = {
            "version": 1,
            "mesh": {"id": f"s-{secrets.token_hex(4)}"},
            "gateway": {"listeners": [{"name": "public", "address": edge, "port": GATEWAY}],
                        "admin": {"address": edge, "port": GATEWAY_ADMIN}, "zone": "a"},
            "discovery": {"mdns": {"interfaces": [edge]}},
            "sidecar": {"inbound": {"port": INBOUND}, "outbound": {"port": OUTBOUND},
                        "admin": {"port": ADMIN}, "drain": "100ms"},
            # ejected for 2 s (then 4, 6...): health checks decide while the partition lasts
            "services": {"catalog": {"versions": {"v1": {}},
                                     "outlier_detection": {"base_ejection_time": "2s"}}},
            "policies": {"partition-tolerant": POLICY},
            "routes": [{"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
                        "forward": {"service": "catalog", "rewrite": {"prefix": "/"}},
                        "policies": ["partition-tolerant"]}],
        }
        path = r.workdir / "mesh.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        r.say(f"hosts (namespaces on one bridge): edge {edge} (gateway), "
              + ", ".join(f"{h} {net.address(h)}" for h in ("h1", "h2", "h3")) + " (catalog)")

        gateway = hosts.spawn("edge", "gateway",
                              procs.python("-m", "mesh.cli", "gateway", "--config", str(path), "--workers", "1"))
        starting = [(gateway, "gateway ready", "serves")]  # each with what its log says when ready, and what it means
        at = {}  # where each host's catalog sidecar is: the host's address, or its pod's
        services = load_config(path).services
        for host in ("h1", "h2", "h3"):
            placed = hosts.catalog(host, f"catalog-{host}", str(path), r.workdir / f"pods-{host}",
                                   (APP, INBOUND, OUTBOUND, ADMIN), services)
            at[host] = placed.address
            listens = f"listens in pod {placed.pod.netns}" if placed.pod else "listens"
            starting += [(placed.app, "listening on", listens),
                         (placed.sidecar, "announced ", "announced its instance over mDNS")]
        r.say(f"started the gateway and {len(starting) - 1} processes (apps, sidecars); waiting for each")
        for child, ready, said in starting:
            procs.wait_log(child, ready)
            r.say(f"{child.name} {said}")

        def status() -> dict:
            with urllib.request.urlopen(f"http://{edge}:{GATEWAY_ADMIN}/status", timeout=2) as resp:
                return json.load(resp)

        def endpoints() -> list[dict]:
            return status()["clusters"]["catalog/v1"]["endpoints"]

        r.say("waiting for the gateway to find the 3 instances over mDNS")
        net.call("edge", wait_until, lambda: len(status()["registry"]["instances"]) == 3, 15)
        r.say("the gateway knows the 3 instances")
        catalogs = {f"catalog-{h}": (f"http://{at[h]}:{ADMIN}", h) for h in ("h1", "h2", "h3")}
        watched = hosts.watch({"gateway": (f"http://{edge}:{GATEWAY_ADMIN}", "edge"), **catalogs})
        r.say(f"load from edge: {rate} req/s for {seconds:g} s; edge and h2 partitioned from {cut_at:g} s "
              f"for {cut_for:g} s")
        load = Load(f"http://{edge}:{GATEWAY}/catalog/items/1", threads=4, rate=rate,
                    netns=net.name("edge")).start()
        h2 = f"{at['h2']}:{INBOUND}"
        try:
            time.sleep(cut_at)
            net.partition("edge", "h2")
            cut = time.time()
            r.say("edge and h2 partitioned")
            time.sleep(cut_for)
            during = next((e for e in net.call("edge", endpoints) if e["address"] == h2), None)
            healed = time.time()
            net.heal("edge", "h2")
            r.say("partition healed")
            _mesh.rest(load, seconds)
        finally:
            samples = load.stop()
            watched.stop()
        after = next((e for e in net.call("edge", endpoints) if e["address"] == h2), None)

    report = Report("partition", TITLE, samples=samples, started=load.started, proxies=watched)
    where = (f"a catalog instance in a pod inside each, joined to the host's bridge: {', '.join(at.values())}"
             if in_pods else "a catalog app on the host's loopback, its sidecar on the host's address")
    report.mesh = (f"4 network namespaces on one bridge: edge {edge} (gateway, 1 worker, and the load), "
                   f"h1, h2, h3 ({where}); mDNS on the bridge, mesh id {config['mesh']['id']}")
    report.load = (f"GET /catalog/items/1 from edge through the gateway, {rate} req/s on 4 connections for "
                   f"{seconds:g} s; route: per-try timeout {PER_TRY * 1000:g} ms, 3 attempts; "
                   f"ejection 2 s, health checks every 1 s")
    report.fault = (f"edge and h2 partitioned (every packet between them lost, both ways) from "
                    f"{cut - load.started:.1f} s to {healed - load.started:.1f} s")
    report.slo = (f"≥ 99.9 % succeed; from {settle:g} s after the cut until the heal, every request answered "
                  f"at its first attempt; h2 answers again within {BACK_WITHIN:g} s of the heal")
    report.phases = [("before the partition", load.started, cut),
                     (f"cut + {settle:g} s", cut, cut + settle),
                     ("partitioned, settled", cut + settle, healed),
                     ("healed", healed, float("inf"))]
    settled = report.during(cut + settle, healed)
    retried = [s for s in settled if s.attempts > 1 or not s.ok]
    back = next((s for s in report.during(healed) if s.ok and s.instance == "catalog-h2"), None)
    report.figure("h2 in the gateway's cluster during the partition",
                  "-" if during is None else f"healthy={during.get('healthy')}")
    report.figure("h2 in the gateway's cluster at the end",
                  "-" if after is None else f"healthy={after.get('healthy')}")
    report.figure("requests that needed a retry", sum(1 for s in samples if s.attempts > 1))
    report.figure("answers by h2 while partitioned",
                  sum(1 for s in report.during(cut, healed) if s.instance == "catalog-h2"))
    report.check_success("≥ 99.9 % of all requests succeed", samples, 0.999)
    report.check(f"from {settle:g} s after the cut until the heal, 1 attempt each", settled and not retried,
                 f"{len(settled) - len(retried)} of {len(settled)}")
    report.check(f"h2 answers again within {BACK_WITHIN:g} s of the heal",
                 back is not None and back.start - healed <= BACK_WITHIN,
                 "never" if back is None else f"after {back.start - healed:.1f} s")
    return report


if __name__ == "__main__":
    sys.exit(main("partition"))
