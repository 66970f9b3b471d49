"""What the scenarios on one host share: a mesh of sidecars on a loopback /24 (or in pods) and mesh
id of its own, the route policy they run with, the instances they start, which proxies' /metrics
their reports read, the load on catalog, and how they count its answers."""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import Iterable, Iterator

from tools.scenario import Proxies, Run
from tools.testbed import Load, Mesh, Sample, Sidecared, sidecar_config

# what a user would put on a route to a replicated service: a deadline, a per-try timeout, and up
# to two retries (each on another endpoint) on 5xx, refused connections and resets
RESILIENT = {
    "timeout": {"request": "5s", "per_try": "1s"},
    "retries": {"attempts": 3, "retry_on": ["5xx", "connect-failure", "reset"],
                "backoff": {"base": "10ms", "max": "100ms"}},
}


@contextlib.contextmanager
def sidecar_mesh(run: Run, *, services: dict | None = None, policies: dict | None = None,
                 catalog_policies: list[str] = ("resilient",)) -> Iterator[Mesh]:
    """A gateway (zone a) finding sidecars over mDNS, its own mesh id; the scenario starts the
    instances, each in a pod of its own (the run's isolation, pod as root: mDNS on the pods'
    bridge) or on 127.x.y.N (loopback: mDNS on 127.x.y.1). `services` entries are merged over the
    defaults (catalog, orders, payments, users with version v1). Everything it started (pods
    included) is removed on the way out."""
    m = Mesh(run.workdir, {}, progress=run.say, isolation=run.isolation)
    config = sidecar_config(f"{m.net}.1")
    config["mesh"]["id"] = f"s-{secrets.token_hex(4)}"
    config["sidecar"]["drain"] = "100ms"  # no scenario stops an instance gracefully; teardown is quick
    for name, extra in (services or {}).items():
        config["services"].setdefault(name, {"versions": {"v1": {}}}).update(extra)
    config["policies"] = {"resilient": RESILIENT, **(policies or {})}
    for route in config["routes"]:
        if route["name"] == "catalog" and catalog_policies:
            route["policies"] = list(catalog_policies)
    m.write(config)
    try:
        yield m
    finally:
        m.stop()


def describe(m: Mesh, instances: list[Sidecared]) -> str:
    names = ", ".join(f"{s.name}" + (f" (zone {s.inst.sidecar.zone})" if s.inst.sidecar.zone else "")
                      for s in instances)
    where = (f"each in a pod of its own (namespaces {m.pods.prefix}-p*), mDNS on their bridge"
             if m.pods else f"isolation loopback, mDNS on {m.net}.0/24")
    return (f"gateway (zone a, 1 worker) and {len(instances)} instances with sidecars: {names}; "
            f"{where}, mesh id {m.config['mesh']['id']}")


# three catalog instances, catalog-1 to catalog-3: what most scenarios run
CATALOGS = tuple({"service": "catalog", "name": f"catalog-{i}"} for i in (1, 2, 3))


def start(m: Mesh, *specs: dict) -> list[Sidecared]:
    """Start the gateway and the instances at once; return when the gateway has found them all."""
    m.start_gateway(wait=False)
    instances = m.start_instances(*specs)
    m.wait_gateway()
    m.wait_instances(len(instances))
    return instances


def start_catalogs(r: Run, m: Mesh) -> tuple[list[Sidecared], Proxies]:
    """The gateway and CATALOGS, started; their /metrics watched from now."""
    r.say("starting the gateway and three catalog instances with their sidecars")
    instances = start(m, *CATALOGS)
    return instances, watch(m, instances)


def start_orders(m: Mesh) -> list[Sidecared]:
    """Start the gateway and an order's path: orders-1, catalog-1 and payments-1 to payments-3, each
    with its sidecar; return when the gateway and the orders sidecar know all five."""
    m.start_gateway(wait=False)
    instances = m.start_instances({"service": "orders", "name": "orders-1"},
                                  {"service": "catalog", "name": "catalog-1"},
                                  *({"service": "payments", "name": f"payments-{i}"} for i in (1, 2, 3)))
    m.wait_gateway()
    m.wait_converged(instances[:1], 5)  # the gateway and the orders sidecar know every instance
    return instances


def proxies(m: Mesh, instances: list[Sidecared]) -> Proxies:
    p = Proxies()
    p.add("gateway", m.admin)
    for s in instances:  # a pod's admin listener is reached through the mesh namespace
        p.add(s.name, s.admin, via=m.via if s.netns else None)
    return p


def watch(m: Mesh, instances: list[Sidecared]) -> Proxies:
    """The /metrics of the gateway and every instance's sidecar, counted from now, polled in the
    background."""
    p = proxies(m, instances)
    p.baseline()
    return p.start()


def catalog_load(m: Mesh, rate: float, threads: int = 4) -> Load:
    """GET /catalog/items/1 through the gateway at `rate` requests per second, started."""
    return Load(m.url + "/catalog/items/1", threads=threads, rate=rate).start()


def catalog_load_text(rate: float, seconds: float | None = None, threads: int = 4) -> str:
    """catalog_load in the report's words."""
    return (f"GET /catalog/items/1 through the gateway, {rate} req/s on {threads} connections"
            + (f" for {seconds:g} s" if seconds is not None else ""))


def rest(load: Load, seconds: float) -> None:
    """Sleep until `seconds` after the load started."""
    time.sleep(max(load.started + seconds - time.time(), 0))


def answer_errors(instances: list[Sidecared], seconds: float,
                  status: int = 503) -> tuple[float, float, dict[str, int]]:
    """Every one of `instances` answers `status` to every request for `seconds`, then answers again:
    (when it began, when it ended, {instance: requests its app got meanwhile})."""
    began = time.time()
    before = {s.name: s.knobs(error_rate=1.0, error_status=status)["hits"] for s in instances}
    time.sleep(seconds)
    during = {s.name: s.knobs(error_rate=0.0)["hits"] - before[s.name] for s in instances}
    return began, time.time(), during


def answered_before(samples: Iterable[Sample], start: float, at: float) -> list[Sample]:
    """The requests sent from `start` and answered before `at` (one in flight at `at` is retried
    after it)."""
    return [s for s in samples if start <= s.start < at and s.end < at]


def answers_by(samples: Iterable[Sample], of: dict[str, str]) -> dict[str, int]:
    """Successful answers counted by `of[instance that answered]` ("?" for one not in `of`)."""
    counts: dict[str, int] = {}
    for s in samples:
        if s.ok:
            key = of.get(s.instance, "?")
            counts[key] = counts.get(key, 0) + 1
    return counts
