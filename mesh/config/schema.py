"""The mesh.yaml schema: typed, frozen models that follow Envoy's tree (listener → route → cluster → endpoint).

Every field says its default and meaning. Later features add fields here; a key the schema does not
know is an error, so a typo never passes silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from .source import show
from .types import Address, Duration, Model, Name, Regex, parse_duration, split_hostport

Port = Annotated[int, Field(ge=1, le=65535)]
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")


def _one_of(model: Model, names: tuple[str, ...], *, required: bool = True) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) > 1 or (required and not given):
        raise ValueError(
            f"expected exactly one of {', '.join(names)} (got {', '.join(given) or 'none'})"
        )


# ---------------------------------------------------------------------------------------------
# Listeners and admin


class ListenerTls(Model):
    """TLS on a listener: the certificate the listener presents to downstream clients."""

    cert: str = Field(description="PEM certificate chain, relative to the config file")
    key: str = Field(description="PEM private key, relative to the config file")
    http2: bool = Field(True, description="offer HTTP/2 over ALPN (default true)")


class Listener(Model):
    """Where the gateway accepts downstream connections."""

    name: Name
    address: Address = Field("127.0.0.1", description="IP to bind (default 127.0.0.1)")
    port: Port
    tls: ListenerTls | None = Field(None, description="serve HTTPS with this certificate")


class Admin(Model):
    """The admin listener: /status (and later /metrics). Binds loopback by default."""

    address: Address = "127.0.0.1"
    port: Port = 9901


class Gateway(Model):
    listeners: Annotated[list[Listener], Field(min_length=1)]
    admin: Admin = Admin()
    zone: Name | None = Field(None, description="the gateway's zone, for zone-aware balancing (default none)")


# ---------------------------------------------------------------------------------------------
# Services, clusters, endpoints


class Endpoint(Model):
    """One upstream instance: `127.0.0.1:9101` or the mapping form with weight and zone."""

    address: Address
    port: Port
    weight: Annotated[int, Field(ge=1, le=10_000)] = Field(1, description="load balancing weight")
    zone: Name | None = Field(None, description="locality, for zone-aware balancing")


class Launch(Model):
    """What `mitmesh up` starts for this cluster: a demo app from services/."""

    app: Literal["users", "catalog", "orders", "payments", "auth"]
    instances: Annotated[int, Field(ge=1, le=32)] = Field(
        1, description="without static endpoints: instances to start, each with its sidecar and found "
                       "by discovery (default 1); with static endpoints, one app listens on each, bare"
    )
    zones: list[Name] = Field(
        default_factory=list, description="zones of the started instances, in turn (default none)"
    )
    weight: Annotated[int, Field(ge=1, le=10_000)] = Field(
        1, description="weight the started instances announce (default 1)"
    )
    latency: Duration = Field(0.0, description="added latency per request (default 0)")
    error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.0, description="share of requests answered 500 (default 0)"
    )


class Version(Model):
    """One version of a service: a cluster, in Envoy's words."""

    endpoints: list[Annotated[Endpoint, BeforeValidator(split_hostport)]] = Field(
        default_factory=list, description="static endpoints (host:port or mappings)"
    )
    launch: Launch | None = None


class HashOn(Model):
    """What consistent_hash hashes: exactly one of a header, a cookie or the source IP."""

    header: str | None = Field(None, description="request header name, e.g. x-user")
    cookie: str | None = Field(None, description="cookie name, e.g. session")
    source_ip: Literal[True] | None = Field(None, description="true: the downstream IP address")

    @model_validator(mode="after")
    def _exactly_one(self) -> HashOn:
        _one_of(self, ("header", "cookie", "source_ip"))
        return self


def _enabled_shorthand(value: Any) -> Any:
    if value is True:
        return {}
    if value is False:
        return None
    return value


class ZoneAware(Model):
    """Prefer endpoints in the caller's zone; fail over to other zones when too few are healthy."""

    min_healthy: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.5, description="share of the caller zone's endpoints that must be healthy for that zone to "
                         "keep all traffic (default 0.5); below it, traffic spreads over the healthy "
                         "endpoints of every zone; with none healthy, it goes to the other zones"
    )


class LoadBalancer(Model):
    policy: Literal["round_robin", "least_request", "random", "consistent_hash"] = Field(
        "round_robin", description="how an endpoint is chosen (default round_robin)"
    )
    hash_on: HashOn | None = Field(None, description="consistent_hash only: the key to hash")
    points_per_weight: Annotated[int, Field(ge=16, le=4096)] = Field(
        256, description="consistent_hash only: points on the hash ring per unit of weight, weights "
                         "divided by their greatest common divisor (default 256)"
    )
    zone_aware: Annotated[ZoneAware | None, BeforeValidator(_enabled_shorthand)] = Field(
        None, description="prefer the caller's zone: true, or {min_healthy: 0.5} (default off)"
    )

    @model_validator(mode="after")
    def _hash_needs_key(self) -> LoadBalancer:
        if self.policy == "consistent_hash" and self.hash_on is None:
            raise ValueError("consistent_hash needs hash_on: {header: NAME}, {cookie: NAME} or "
                             "{source_ip: true}")
        if self.policy != "consistent_hash" and self.hash_on is not None:
            raise ValueError("hash_on is only used by policy consistent_hash "
                             f"(got policy {show(self.policy)})")
        return self


class HealthCheck(Model):
    """Active health checks of every endpoint the proxy sends to (Envoy's health_checks)."""

    interval: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = Field(
        1.0, description="time between checks of one endpoint (default 1s)"
    )
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = Field(
        0.5, description="a check not answered within this fails (default 500ms)"
    )
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = Field(
        2, description="consecutive failed checks that take an endpoint out of rotation (default 2)"
    )
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] = Field(
        1, description="consecutive passed checks that bring it back (default 1)"
    )
    path: str | None = Field(
        None, description="HTTP GET this path and expect a 2xx; default: a TCP connect is the check"
    )

    @model_validator(mode="after")
    def _path(self) -> HealthCheck:
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"path: expected a path starting with '/' (got {show(self.path)})")
        return self


class Service(Model):
    versions: Annotated[dict[Name, Version], Field(min_length=1)]
    lb: LoadBalancer = LoadBalancer()
    connect_timeout: Duration = Field(1.0, description="upstream TCP connect timeout (default 1s)")
    health_check: HealthCheck = Field(HealthCheck(), description="active health checks (default on, 1s)")


# ---------------------------------------------------------------------------------------------
# Routes


def _exact_shorthand(value: Any) -> Any:
    return {"exact": value} if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value


class StringMatch(Model):
    """Match a header or query value; a bare string means `exact`."""

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: Regex | None = None
    present: bool | None = Field(None, description="true: must be present; false: must be absent")

    @model_validator(mode="after")
    def _exactly_one(self) -> StringMatch:
        _one_of(self, ("exact", "prefix", "suffix", "regex", "present"))
        return self


class PathMatch(Model):
    exact: str | None = None
    prefix: str | None = None
    regex: Regex | None = Field(None, description="must match the whole path")

    @model_validator(mode="after")
    def _exactly_one(self) -> PathMatch:
        _one_of(self, ("exact", "prefix", "regex"))
        for name in ("exact", "prefix"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{name}: expected a path starting with '/' (got {show(value)})")
        return self


def _host_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _upper_methods(value: Any) -> Any:
    if isinstance(value, list):
        return [v.upper() if isinstance(v, str) else v for v in value]
    return value


class Match(Model):
    """All given conditions must hold. An empty match matches every request."""

    host: Annotated[list[str], BeforeValidator(_host_list)] = Field(
        default_factory=lambda: ["*"],
        description="host names: exact, '*.example.com' or '*' (default '*')",
    )
    path: PathMatch | None = Field(None, description="exact, prefix or regex (default any path)")
    methods: Annotated[list[Literal[METHODS]], BeforeValidator(_upper_methods)] = Field(  # type: ignore[valid-type]
        default_factory=list, description="allowed methods (default any)"
    )
    headers: dict[str, Annotated[StringMatch, BeforeValidator(_exact_shorthand)]] = Field(
        default_factory=dict, description="header name → match"
    )
    query: dict[str, Annotated[StringMatch, BeforeValidator(_exact_shorthand)]] = Field(
        default_factory=dict, description="query parameter → match"
    )


class Rewrite(Model):
    """Path rewrite before forwarding: replace the matched prefix, or a regex substitution."""

    prefix: str | None = Field(None, description="replaces the route's path prefix")
    regex: Regex | None = None
    substitution: str | None = Field(None, description="with regex: replacement, \\1 for groups")

    @model_validator(mode="after")
    def _valid(self) -> Rewrite:
        _one_of(self, ("prefix", "regex"))
        if self.regex is not None and self.substitution is None:
            raise ValueError("regex needs a substitution")
        if self.regex is None and self.substitution is not None:
            raise ValueError("substitution needs a regex")
        return self


class Forward(Model):
    """Send to a service: one version, or a weighted split across versions."""

    service: Name
    version: Name | None = Field(None, description="the one version to use")
    weights: dict[Name, Annotated[int, Field(ge=0, le=10_000)]] | None = Field(
        None, description="version → weight, e.g. {v1: 90, v2: 10}"
    )
    rewrite: Rewrite | None = None

    @model_validator(mode="after")
    def _version_or_weights(self) -> Forward:
        if self.version is not None and self.weights is not None:
            raise ValueError("expected either version or weights, not both")
        if self.weights is not None and sum(self.weights.values()) <= 0:
            raise ValueError(f"weights: expected at least one weight above 0 (got {show(self.weights)})")
        return self


def _json_body(value: Any) -> Any:
    if value is not None and not isinstance(value, (str, dict, list)):
        raise ValueError(f"expected a string, mapping or list (got {show(value)})")
    return value


class Direct(Model):
    """Answer directly, without an upstream. A mapping or list body is sent as JSON."""

    status: Annotated[int, Field(ge=200, le=599)] = 200
    body: Annotated[Any, BeforeValidator(_json_body)] = None
    headers: dict[str, str] = Field(default_factory=dict)


class Redirect(Model):
    location: str
    status: Literal[301, 302, 303, 307, 308] = 302


class Route(Model):
    """A match and exactly one action: forward, direct or redirect. First match wins."""

    name: Name
    match: Match = Match()
    forward: Forward | None = None
    direct: Direct | None = None
    redirect: Redirect | None = None
    policies: list[Name] = Field(default_factory=list, description="names of policy blocks")

    @model_validator(mode="after")
    def _one_action(self) -> Route:
        _one_of(self, ("forward", "direct", "redirect"))
        if self.forward and self.forward.rewrite and self.forward.rewrite.prefix is not None:
            path = self.match.path
            if path is None or path.prefix is None:
                raise ValueError("forward.rewrite.prefix needs match.path.prefix")
        return self


# ---------------------------------------------------------------------------------------------
# Policies: named blocks that routes refer to. Each kind is one optional field.


class Timeout(Model):
    request: Duration = Field(15.0, description="whole request deadline, all attempts (default 15s)")


class Policy(Model):
    timeout: Timeout | None = None


# ---------------------------------------------------------------------------------------------


class MeshSettings(Model):
    trust_domain: str = Field("mitmesh.local", description="SPIFFE trust domain")
    namespace: Name = Field("demo", description="namespace of workload identities")
    id: Name = Field(
        "default", description="mesh id, announced in every instance's TXT record: proxies only see "
                               "instances of their own mesh (default 'default')"
    )


class Mdns(Model):
    """Discovery over multicast DNS (zeroconf), on explicit interface addresses only."""

    interfaces: Annotated[list[Address], Field(min_length=1)] = Field(
        description="addresses of the interfaces the gateway sends and receives mDNS on, e.g. "
                    "[127.0.0.1]; never all interfaces. A sidecar uses its own instance address"
    )


class Discovery(Model):
    """Where proxies find endpoints besides the static ones in `services`."""

    mdns: Mdns | None = Field(None, description="zeroconf discovery (default off: static endpoints only)")


def _named(name: str) -> Any:
    def fill(value: Any) -> Any:
        return {"name": name, **value} if isinstance(value, dict) and "name" not in value else value
    return BeforeValidator(fill)


class SidecarSettings(Model):
    """Defaults for every sidecar (`mitmesh sidecar`): its listeners, admin and graceful stop.

    Each instance binds them on its own address (`--address`), so all sidecars share these ports.
    """

    inbound: Annotated[Listener, _named("inbound")] = Field(
        Listener(name="inbound", port=15006),
        description="the inbound listener: the only way in to the local app (default port 15006)",
    )
    outbound: Annotated[Listener, _named("outbound")] = Field(
        Listener(name="outbound", port=15001),
        description="the outbound listener: the app's HTTP proxy to other services (default port 15001)",
    )
    admin: Admin = Field(Admin(port=15000), description="the admin listener (default port 15000)")
    drain: Duration = Field(
        2.0, description="graceful stop: time between the mDNS goodbye and closing the listeners (default 2s)"
    )
    first_address: Address = Field(
        "127.0.0.2", description="`mitmesh up` gives its first instance this loopback address and each "
                                 "next instance the next one (default 127.0.0.2)"
    )

    @model_validator(mode="after")
    def _plain_outbound(self) -> SidecarSettings:
        if self.outbound.tls is not None:
            raise ValueError("outbound.tls: the outbound listener speaks plain HTTP to its local app "
                             "(got a tls block)")
        return self


class MeshConfig(Model):
    version: Literal[1] = Field(1, description="schema version")
    mesh: MeshSettings = MeshSettings()
    gateway: Gateway
    discovery: Discovery = Field(Discovery(), description="how proxies find endpoints (default: static only)")
    sidecar: SidecarSettings = Field(SidecarSettings(), description="defaults of every sidecar")
    services: dict[Name, Service] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    policies: dict[Name, Policy] = Field(default_factory=dict)
