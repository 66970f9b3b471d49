"""What a sidecar routes: inbound requests to its own app, outbound requests to the service named by
their host. Routes are built once per snapshot (and per discovered service), never per request."""

from __future__ import annotations

import functools
import hashlib
import ipaddress

from mesh.config import schema
from mesh.core.plan import Context, Runtime, Uses, compile_plan, merged
from mesh.core.routing import ForwardAction, Route
from mesh.core.state import LOCAL, Snapshot


# kinds a caller's sidecar applies on its calls to the service (as Istio's VirtualService): applied
# again at the service's own inbound, they would retry its one app and inject every fault twice
CALLER_SIDE = frozenset({"timeout", "retries", "fault", "idempotency"})


def forward_route(name: str, service: str, cluster: str, config: schema.MeshConfig | None = None,
                  skip: frozenset[str] = frozenset(), runtime: Runtime | None = None, base: str = "",
                  uses: Uses | None = None) -> Route:
    """A route that sends everything to one cluster, without rewriting, with the policies of the
    service (`services.NAME.policies`) when the config names it, but for the kinds in `skip`."""
    rc = schema.Route(name=name, forward=schema.Forward(service=service))
    svc = config.services.get(service) if config is not None else None
    models = merged(config, svc.policies) if config is not None and svc is not None else {}
    models = {kind: value for kind, value in models.items() if kind not in skip}
    ctx = Context(config, rc, f"service {service}", base, runtime or Runtime(),
                  uses if uses is not None else Uses())
    return Route(index=0, name=name, action=ForwardAction(service, (cluster,), (1,)), methods=None,
                 headers=(), query=(), path_regex=None, plan=compile_plan(models, ctx), config=rc)


def routes_of(config: schema.MeshConfig, workload, runtime: Runtime, base: str, uses: Uses) -> dict[str, Route]:
    """A sidecar's routes, compiled with its snapshot: `inbound` to its app, and `outbound.NAME` to
    every service the config names (a discovered service has no policies: `outbound_route` builds
    its route when asked)."""
    out = {"inbound": forward_route("inbound", workload.service, LOCAL, config, CALLER_SIDE, runtime, base, uses)}
    for service in config.services:
        if service != LOCAL:
            out[f"outbound.{service}"] = forward_route(f"outbound.{service}", service, service, config,
                                                       frozenset(), runtime, base, uses)
    return out


def inbound_route(snap: Snapshot) -> Route:
    if snap.workload is None:
        raise ValueError("inbound routing needs a sidecar's workload")
    return snap.sidecar_routes["inbound"]


def service_of_host(host: str) -> str:
    """`catalog`, `catalog:80` or `Catalog.` → `catalog`: the service an outbound request names."""
    host = host.lower().rstrip(".")
    if host.startswith("["):
        return host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def outbound_route(snap: Snapshot, host: str) -> Route | None:
    """The route to every instance of the service `host` names, or None if the mesh has no such
    service (neither in the config nor discovered)."""
    service = service_of_host(host)
    if not service or service == LOCAL or "/" in service or service not in snap.clusters:
        return None
    return snap.sidecar_routes.get(f"outbound.{service}") or forward_route(f"outbound.{service}", service, service)


# In pods, an app calls `http://payments/...` with no proxy setting: the pod's hosts file maps each
# mesh service to a virtual address in this reserved range (as Istio's DNS proxying does), nftables
# sends the connection to the sidecar, and the sidecar maps the original destination back.
VIRTUAL_NET = "240.240.0.0/16"


def virtual_addresses(services) -> dict[str, str]:
    """{service: virtual address}: stable per name (a hash of it, the next free one on a collision,
    names taken in sorted order), so adding a service moves no other one's address."""
    return dict(_virtual(tuple(sorted(services))))


@functools.cache
def _virtual(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    net = ipaddress.ip_network(VIRTUAL_NET)
    size = net.num_addresses - 2
    taken: dict[int, str] = {}
    out = []
    for name in names:
        slot = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % size
        while slot in taken:
            slot = (slot + 1) % size
        taken[slot] = name
        out.append((name, str(net.network_address + 1 + slot)))
    return tuple(out)


def service_of_address(snap: Snapshot, address: str) -> str | None:
    """The mesh service whose virtual address `address` is, or None."""
    for name, vip in _virtual(tuple(sorted(snap.config.services))):
        if vip == address:
            return name
    return None
