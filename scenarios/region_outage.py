"""region-outage: the gateway's whole region (two zones) dies, traffic fails over to the other
region by priority levels, and comes back when the region does.

The gateway runs in zone eu-1 of region eu; catalog has one instance in eu-1, one in eu-2 (same
region, another zone) and two in region us. Its balancer has locality priority levels
(`lb.locality`, Envoy's overprovisioning factor 1.4) and peak EWMA within a level: while eu-1 is
healthy it takes all the traffic. Then both eu instances get SIGKILL at once (apps and sidecars, no
goodbye): refused connections eject them, retries go elsewhere, and with levels 0 and 1 empty,
level 2 (us) takes everything. Then two new eu instances start (eu-1 and eu-2): found through etcd
(the dead ones left it with their leases), level 0 takes the traffic back.

SLO: ≥ 99.5 % of all requests succeed; 100 % of those sent from 10 s after the outage (2 s in the
short run) until the new eu instances start, all answered in us; before the outage ≥ 99 % answered in eu-1;
from 10 s (2 s) after the region returns, ≥ 99 % answered in eu-1 again.
"""

from __future__ import annotations

import sys
import time

from mesh.config import load as load_config
from mesh.security import pki
from tools import certcmd, etcdserver
from tools.scenario import Report, Run, main

from . import _mesh

TTL = 3  # etcd lease of each instance, seconds
TITLE = "the gateway's region (two zones) dies: priority levels fail over to the other region, and back"
# why it runs on loopback whatever is asked (as `mitmesh up --control-plane etcd`)
LOOPBACK_ONLY = "its etcd listens on this host's loopback, which pods cannot reach"


def run(r: Run) -> Report:
    outage_at, settle, outage_for = r.pick(5.0, 1.5), r.pick(10.0, 2.0), r.pick(15.0, 5.0)
    rate = 50
    services = {"catalog": {"lb": {"policy": "peak_ewma", "locality": True}}}
    # mutual TLS, as `mitmesh up --control-plane etcd`: the mesh's CA (certs/ beside the scenario's
    # mesh.yaml) signs etcd's certificate and the proxies' workload certificates they present
    pki.init_mesh(r.workdir / "certs", "mitmesh.local")
    etcd = etcdserver.start(r.workdir / "etcd", r.workdir / "logs", certs=r.workdir / "certs")
    try:
        return _run(r, etcd, outage_at, settle, outage_for, rate, services)
    finally:
        etcd.child.stop()


def _run(r: Run, etcd, outage_at: float, settle: float, outage_for: float, rate: int, services: dict) -> Report:
    with _mesh.sidecar_mesh(r, services=services) as m:
        m.config["gateway"].update(zone="eu-1", region="eu")
        # etcd discovery: a killed instance is gone from every proxy when its lease ends (mDNS keeps
        # its record cached for minutes, and a dead endpoint still counts in its level's health)
        members = [f"127.0.0.1:{etcd.client_port}"]
        m.config["discovery"] = {"etcd": {"endpoints": members, "ttl": TTL, "tls": {}}}
        m.write()
        # the gateway's and catalog's workload certificates, as `up` issues them
        certcmd.rotate(r.workdir / "certs", load_config(m.path))
        placed = [("eu1", "eu-1", "eu"), ("eu2", "eu-2", "eu"), ("us1", "us-1", "us"), ("us2", "us-2", "us")]
        r.say(f"etcd on 127.0.0.1:{etcd.client_port} (pid {etcd.child.pid}); starting the gateway (zone eu-1, "
              f"region eu) and four catalog instances: eu-1, eu-2, us-1, us-2")
        m.start_gateway(wait=False)
        instances = m.start_instances(*({"service": "catalog", "name": f"catalog-{n}", "zone": z, "region": g}
                                        for n, z, g in placed))
        m.wait_gateway()
        m.wait_instances(len(instances), source="etcd")
        region = {s.name: s.inst.sidecar.region for s in instances}
        zone = {s.name: s.inst.sidecar.zone for s in instances}
        watched = _mesh.watch(m, instances)
        lost = [s for s in instances if region[s.name] == "eu"]
        load = _mesh.catalog_load(m, rate)
        r.say(f"load: {rate} req/s; SIGKILL of region eu ({', '.join(s.name for s in lost)}) at {outage_at:g} s, "
              f"new eu instances {outage_for:g} s later")
        try:
            time.sleep(outage_at)
            down = time.time()
            for s in lost:
                m.kill_instance(s)
            r.say("region eu is gone")
            time.sleep(outage_for)
            back_started = time.time()
            returned = m.start_instances({"service": "catalog", "name": "catalog-eu1b", "zone": "eu-1", "region": "eu"},
                                         {"service": "catalog", "name": "catalog-eu2b", "zone": "eu-2", "region": "eu"})
            for s in returned:
                region[s.name], zone[s.name] = "eu", s.inst.sidecar.zone
            back = time.time()
            r.say(f"region eu is back ({back - back_started:.1f} s to start and announce)")
            time.sleep(settle + r.pick(5.0, 2.0))
        finally:
            samples = load.stop()
            watched.stop()
        levels = m.status()["clusters"]["catalog/v1"]["lb"].get("locality", {}).get("levels")

    report = Report("region-outage", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = (_mesh.describe(m, instances).replace("zone a", "zone eu-1").replace(
        f"mDNS on {m.net}.0/24", f"etcd discovery (lease TTL {TTL} s)")
        + "; catalog: lb.locality (overprovisioning 1.4), peak_ewma")
    report.load = _mesh.catalog_load_text(rate)
    report.fault = (f"SIGKILL of both eu instances {down - load.started:.1f} s into the load; two new eu "
                    f"instances announced {back - load.started:.1f} s in")
    report.slo = (f"≥ 99.5 % succeed; before: ≥ 99 % in eu-1; from {settle:g} s after the outage until "
                  f"the region returns: 100 % succeed, all in us; from {settle:g} s after it returns: ≥ 99 % in eu-1")
    report.phases = [("before the outage", load.started, down), (f"outage + {settle:g} s", down, down + settle),
                     ("region eu gone", down + settle, back_started),
                     ("eu instances starting", back_started, back), (f"back + {settle:g} s", back, back + settle),
                     ("region eu back", back + settle, float("inf"))]
    before = _mesh.answered_before(samples, load.started, down)
    gone = report.during(down + settle, back_started)
    after = report.during(back + settle)
    before_zones, gone_regions, after_zones = (_mesh.answers_by(before, zone), _mesh.answers_by(gone, region),
                                               _mesh.answers_by(after, zone))
    for name, counts in (("answers by zone before", before_zones), ("answers by region while eu is gone", gone_regions),
                         ("answers by zone after eu returns", after_zones)):
        report.figure(name, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
    report.figure("gateway's priority levels at the end", str(levels))
    report.check_success("≥ 99.5 % of all requests succeed", samples, 0.995)
    report.check("before the outage ≥ 99 % answered in eu-1", before and before_zones.get("eu-1", 0) >= 0.99 * len(before),
                 f"{before_zones.get('eu-1', 0)} of {len(before)}")
    report.check_success(f"from {settle:g} s after the outage: 100 % succeed", gone)
    report.check("… every answer from region us", gone_regions and set(gone_regions) == {"us"},
                 ", ".join(f"{k}: {v}" for k, v in sorted(gone_regions.items())) or "none")
    in_eu1 = after_zones.get("eu-1", 0)
    report.check(f"from {settle:g} s after eu returns ≥ 99 % answered in eu-1",
                 after and in_eu1 >= 0.99 * sum(after_zones.values()), f"{in_eu1} of {sum(after_zones.values())}")
    return report


if __name__ == "__main__":
    sys.exit(main("region-outage"))
