"""zone-outage: every catalog instance in the gateway's zone dies; traffic fails over to the other zone.

The gateway runs in zone a; catalog has two instances in zone a and two in zone b, and its balancer
is zone-aware (`lb.zone_aware: true`): while zone a is healthy it gets all the traffic. Then both
zone-a instances (apps and sidecars) get SIGKILL at once, as in a lost zone: no goodbye, their mDNS
records stay cached. Requests in flight are reset and retried on another endpoint; refused
connections eject the dead endpoints at once (passive ejection) and health checks keep them out, so
with no healthy endpoint left in zone a the balancer sends everything to zone b.

SLO: at least 99.5 % of the requests succeed; 100 % of those sent 10 s after the outage or later
(2 s in the short run), every one of them answered from zone b; before the outage, zone a answers
at least 99 % of the requests (the balancer really preferred the caller's zone).
"""

from __future__ import annotations

import sys
import time

from tools.scenario import Report, Run, main

from . import _mesh

TITLE = "both catalog instances in the gateway's zone die: traffic fails over to the other zone"


def run(r: Run) -> Report:
    seconds, outage_at, settle = r.pick(25.0, 5.0), r.pick(5.0, 1.5), r.pick(10.0, 2.0)
    rate = 50
    services = {"catalog": {"lb": {"policy": "round_robin", "zone_aware": True}}}
    with _mesh.sidecar_mesh(r, services=services) as m:
        r.say("starting the gateway (zone a) and four catalog instances: two in zone a, two in zone b")
        instances = _mesh.start(m, *({"service": "catalog", "name": f"catalog-{z}{i}", "zone": z}
                                     for z in "ab" for i in (1, 2)))
        zone = {s.name: s.inst.sidecar.zone for s in instances}
        watched = _mesh.watch(m, instances)
        lost = [s for s in instances if zone[s.name] == "a"]
        r.say(f"load: {rate} req/s for {seconds:g} s; SIGKILL of zone a ({', '.join(s.name for s in lost)}) "
              f"at {outage_at:g} s")
        load = _mesh.catalog_load(m, rate)
        try:
            time.sleep(outage_at)
            down = time.time()
            for s in lost:
                m.kill_instance(s)
            r.say("zone a is gone")
            _mesh.rest(load, seconds)
        finally:
            samples = load.stop()
            watched.stop()
        endpoints = m.status()["clusters"]["catalog/v1"]

    report = Report("zone-outage", TITLE, samples=samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances) + "; catalog balancer zone-aware"
    report.load = _mesh.catalog_load_text(rate, seconds)
    report.fault = (f"SIGKILL of every zone-a catalog instance (apps and sidecars, no mDNS goodbye) "
                    f"{down - load.started:.1f} s into the load")
    report.slo = (f"before: ≥ 99 % answered in zone a; ≥ 99.5 % of all requests succeed; 100 % of "
                  f"those sent {settle:g} s after the outage or later, all from zone b")
    report.phases = [("before the outage", load.started, down),
                     (f"outage + {settle:g} s", down, down + settle),
                     (f"{settle:g} s after the outage and later", down + settle, float("inf"))]
    # answered before the kill (a request in flight at the kill is retried, on zone b)
    before = _mesh.answered_before(samples, load.started, down)
    late = report.during(down + settle)
    before_zones, late_zones = _mesh.answers_by(before, zone), _mesh.answers_by(late, zone)
    in_a = before_zones.get("a", 0)
    report.figure("answers by zone before the outage", ", ".join(f"{k} {v}" for k, v in sorted(before_zones.items())))
    report.figure(f"answers by zone from {settle:g} s after", ", ".join(f"{k} {v}" for k, v in sorted(late_zones.items())))
    za = endpoints.get("lb", {}).get("zone_aware") or {}
    report.figure("gateway's balancer at the end", f"local zone {za.get('local_zone')}, "
                  f"sending {'only there' if za.get('local_only') else 'to every zone'}")
    report.check("before the outage ≥ 99 % answered in zone a", before and in_a >= 0.99 * len(before),
                 f"{in_a} of {len(before)}")
    report.check_success("≥ 99.5 % of all requests succeed", samples, 0.995)
    report.check_success(f"100 % succeed from {settle:g} s after the outage", late)
    report.check(f"from {settle:g} s after, every answer from zone b", late_zones and set(late_zones) == {"b"},
                 ", ".join(f"zone {k}: {v}" for k, v in sorted(late_zones.items())) or "none")
    return report


if __name__ == "__main__":
    sys.exit(main("zone-outage"))
