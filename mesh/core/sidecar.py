"""What a sidecar routes: inbound requests to its own app, outbound requests to the service named by
their host. Routes are built once per snapshot (and per discovered service), never per request."""

from __future__ import annotations

from mesh.config import schema
from mesh.resilience.settings import for_route
from mesh.core.routing import ForwardAction, Route, merge_policies
from mesh.core.state import LOCAL, Snapshot


# kinds a caller's sidecar applies on its calls to the service (as Istio's VirtualService): applied
# again at the service's own inbound, they would retry its one app and inject every fault twice
CALLER_SIDE = frozenset({"timeout", "retries", "fault"})


def forward_route(name: str, service: str, cluster: str, config: schema.MeshConfig | None = None,
                  skip: frozenset[str] = frozenset()) -> Route:
    """A route that sends everything to one cluster, without rewriting, with the policies of the
    service (`services.NAME.policies`) when the config names it, but for the kinds in `skip`."""
    rc = schema.Route(name=name, forward=schema.Forward(service=service))
    svc = config.services.get(service) if config is not None else None
    policies = merge_policies(config, svc.policies, rc) if svc is not None else {}
    policies = {kind: value for kind, value in policies.items() if kind not in skip}
    return Route(index=0, name=name, action=ForwardAction(service, (cluster,), (1,)), methods=None,
                 headers=(), query=(), path_regex=None, policies=policies, config=rc,
                 resilience=for_route(policies))


def inbound_route(snap: Snapshot) -> Route:
    if snap.workload is None:
        raise ValueError("inbound routing needs a sidecar's workload")
    return forward_route("inbound", snap.workload.service, LOCAL, snap.config, skip=CALLER_SIDE)


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
    return forward_route(f"outbound.{service}", service, service, snap.config)
