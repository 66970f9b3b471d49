"""The mesh.yaml schema: typed, frozen models that follow Envoy's tree (listener → route → cluster → endpoint).

Every field says its default and meaning. Later features add fields here; a key the schema does not
know is an error, so a typo never passes silently.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from mesh.config import template
from mesh.config.functions import Function
from mesh.config.http import ENGINE_DOC, Engine, Http
from mesh.config.plugins import Plugin
from mesh.config.source import show
from mesh.config.security import (
    ApiKey,
    Authz,
    Cors,
    IdentitySettings,
    IpFilter,
    Jwt,
    MtlsMode,
    OAuth2,
    Require,
    SecurityHeaders,
    SizeLimit,
)
from mesh.config.types import (
    METHODS,
    Address,
    Duration,
    HeaderName,
    HeaderToken,
    Model,
    Name,
    Regex,
    one_of as _one_of,
    parse_duration,
    split_hostport,
)

Port = Annotated[int, Field(ge=1, le=65535)]


# ---------------------------------------------------------------------------------------------
# Listeners and admin


class ListenerTls(Model):
    """TLS on a listener: the certificate the listener presents to downstream clients."""

    cert: str = Field(description="PEM certificate chain, relative to the config file")
    key: str = Field(description="PEM private key, relative to the config file")
    http2: bool = Field(True, description="offer HTTP/2 over ALPN (default true)")
    mtls: MtlsMode | None = Field(
        None, description="client certificates: STRICT requires one from client_ca (mTLS only), "
                          "PERMISSIVE also accepts plaintext and TLS without one (default: not asked)")
    client_ca: str | None = Field(
        None, description="with mtls: CA bundle client certificates must chain to "
                          "(default: the mesh CA, <mesh.identity.dir>/mesh-ca.pem)")

    @model_validator(mode="after")
    def _client_ca_needs_mtls(self) -> ListenerTls:
        if self.client_ca is not None and self.mtls is None:
            raise ValueError("client_ca needs mtls: STRICT or PERMISSIVE")
        return self


class Listener(Model):
    """Where the gateway accepts downstream connections."""

    name: Name
    address: Address = Field("127.0.0.1", description="IP to bind (default 127.0.0.1)")
    port: Port
    tls: ListenerTls | None = Field(None, description="serve HTTPS with this certificate")
    ip_filter: IpFilter | None = Field(None, description="downstream addresses allowed or denied (403)")


class Admin(Model):
    """The admin listener: /status, /metrics, /flows, /record. Binds loopback by default; reading
    is open to whoever reaches it (/flows from beyond loopback: with the token), every other
    method needs the admin token."""

    address: Address = Field(
        "127.0.0.1", description="the address it binds (default 127.0.0.1); `mitmesh gateway "
                                 "--address` and a sidecar's instance address take its place. "
                                 "`mitmesh validate` warns when it is not loopback: reading is open "
                                 "to whoever reaches it, /flows with the admin token")
    port: Port = 9901
    token_file: str | None = Field(
        None, description="file holding the bearer token that POST /record and every other "
                          "non-GET request must present, relative to the config file (default "
                          "<mesh.identity.dir>/admin.token, made by `mitmesh certs init` and "
                          "`mitmesh up` with mode 0600)")


class Gateway(Model):
    listeners: Annotated[list[Listener], Field(min_length=1)]
    admin: Admin = Admin()
    identity: Name = Field("gateway", description="workload name whose certificate the gateway "
                                                  "presents to mTLS upstreams (default gateway)")
    policies: list[Name] = Field(default_factory=list, description="policy blocks for every route "
                                 "that does not set the same kind itself (e.g. size limits)")
    zone: Name | None = Field(None, description="the gateway's zone, for zone-aware balancing (default none)")
    region: Name | None = Field(None, description="the gateway's region, the locality above its zone, "
                                                  "for lb.locality (default none)")
    auth_failures: AuthFailures | None = Field(
        default_factory=lambda: AuthFailures(),
        description="failed authentications allowed per client IP before a 429 (default 20 per "
                    "minute, in memory); null: not counted")
    http: Http = Field(Http(), description="how the gateway reads requests: path normalization, "
                                           "timeouts, HTTP/2 limits (every listener)")
    engine: Engine = Field("standard", description=ENGINE_DOC)


# ---------------------------------------------------------------------------------------------
# Services, clusters, endpoints


class Endpoint(Model):
    """One upstream instance: `127.0.0.1:9101` or the mapping form with weight and zone."""

    address: Address
    port: Port
    weight: Annotated[int, Field(ge=1, le=10_000)] = Field(1, description="load balancing weight")
    zone: Name | None = Field(None, description="locality, for zone-aware balancing")
    region: Name | None = Field(None, description="the locality above zone, for lb.locality")


class Launch(Model):
    """What `mitmesh up` starts for this cluster: a demo app from services/, or a function."""

    app: Literal["users", "catalog", "orders", "payments", "auth", "echo", "function"]
    function: Name | None = Field(None, description="with app: function, the function (`functions`) "
                                                    "served as this service (`mitmesh function`)")
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

    @model_validator(mode="after")
    def _function_app(self) -> Launch:
        if (self.app == "function") != (self.function is not None):
            raise ValueError(f"function: expected together with app: function (got app {self.app}, "
                             f"function {self.function})")
        return self


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


class Locality(Model):
    """Envoy's priority levels by locality: the caller's zone, then its region, then the rest."""

    overprovisioning: Annotated[float, Field(ge=1.0, le=10.0)] = Field(
        1.4, description="Envoy's overprovisioning factor (default 1.4): a level keeps all traffic while "
                         "its healthy share times this is at least 100 %; below, the rest spills to the "
                         "next level")


class LoadBalancer(Model):
    policy: Literal["round_robin", "least_request", "random", "consistent_hash", "peak_ewma"] = Field(
        "round_robin", description="how an endpoint is chosen (default round_robin); peak_ewma: the less "
                                   "costly of two random endpoints, cost = peak-sensitive moving average of "
                                   "latency x (requests in flight + 1), as Linkerd and Finagle"
    )
    hash_on: HashOn | None = Field(None, description="consistent_hash only: the key to hash")
    points_per_weight: Annotated[int, Field(ge=16, le=4096)] = Field(
        256, description="consistent_hash only: points on the hash ring per unit of weight, weights "
                         "divided by their greatest common divisor (default 256)"
    )
    zone_aware: Annotated[ZoneAware | None, BeforeValidator(_enabled_shorthand)] = Field(
        None, description="prefer the caller's zone: true, or {min_healthy: 0.5} (default off)"
    )
    locality: Annotated[Locality | None, BeforeValidator(_enabled_shorthand)] = Field(
        None, description="priority levels by locality with failover: true, or {overprovisioning: 1.4} "
                          "(default off)"
    )

    @model_validator(mode="after")
    def _hash_needs_key(self) -> LoadBalancer:
        if self.policy == "consistent_hash" and self.hash_on is None:
            raise ValueError("consistent_hash needs hash_on: {header: NAME}, {cookie: NAME} or "
                             "{source_ip: true}")
        if self.locality is not None and self.zone_aware is not None:
            raise ValueError("zone_aware and locality both prefer the caller's zone: choose one")
        if self.locality is not None and self.policy == "consistent_hash":
            raise ValueError("locality splits traffic over levels by health, which moves hashed keys: "
                             "not with consistent_hash")
        if self.policy != "consistent_hash" and self.hash_on is not None:
            raise ValueError("hash_on is only used by policy consistent_hash "
                             f"(got policy {show(self.policy)})")
        return self


class HealthCheck(Model):
    """Active health checks of every endpoint the proxy sends to (Envoy's health_checks), and the
    first check of every new endpoint, which takes no traffic until that check passed."""

    interval: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = Field(
        1.0, description="time between checks of one endpoint (default 1s)"
    )
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = Field(
        0.5, description="a check not answered within this fails (default 500ms)"
    )
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = Field(
        2, description="consecutive failed checks that take an endpoint out of rotation (default "
                       "2); a new endpoint is out until its first check passed"
    )
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] = Field(
        1, description="consecutive passed checks that bring it back (default 1); a new "
                       "endpoint's first pass is enough"
    )
    path: str | None = Field(
        None, description="HTTP GET this path and expect a 2xx; default: a connect is the check (a TCP "
                          "connect; for an endpoint called over mTLS, the mTLS handshake and the "
                          "check of its SPIFFE ID, as a request makes)"
    )

    @model_validator(mode="after")
    def _path(self) -> HealthCheck:
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"path: expected a path starting with '/' (got {show(self.path)})")
        return self


def _check_shared(value: str | None) -> str | None:
    if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected a Redis URI such as redis://127.0.0.1:6379/0 (got {show(value)})")
    return value


class CircuitBreaker(Model):
    """pybreaker per endpoint: fail_max failures in a row open it for reset_timeout, then one
    request at a time probes it (half-open) until success_threshold successes close it."""

    fail_max: Annotated[int, Field(ge=1, le=1000)] = Field(5, description="failures in a row that open it (default 5)")
    reset_timeout: Duration = Field(10.0, description="how long it stays open before probing (default 10s)")
    success_threshold: Annotated[int, Field(ge=1, le=100)] = Field(1, description="probe successes that close it (default 1)")
    shared: Annotated[str | None, AfterValidator(_check_shared)] = Field(
        None, description="a Redis URI (redis://host:port/db) through which every proxy and worker using it "
                          "shares openings: an endpoint one of them opens is open for all until its "
                          "reset_timeout ends (default: none, each process keeps its own breakers)")
    shared_poll: Annotated[Duration, Field(gt=0, le=10)] = Field(
        0.25, description="how often openings by others are read from Redis (default 250ms)")


class OutlierDetection(Model):
    """Envoy's outlier ejection: an endpoint failing in a row is ejected for a time that grows with
    each ejection, never more than max_ejection_percent of the cluster (but always one)."""

    consecutive_5xx: Annotated[int, Field(ge=1)] = Field(5, description="5xx or connect failures in a row (default 5)")
    consecutive_gateway_failure: Annotated[int, Field(ge=1)] = Field(
        5, description="502/503/504 or connect failures in a row (default 5)")
    base_ejection_time: Duration = Field(30.0, description="first ejection; n-th lasts n times as long (default 30s)")
    max_ejection_time: Duration = Field(300.0, description="cap of one ejection (default 300s)")
    max_ejection_percent: Annotated[float, Field(ge=0, le=100)] = Field(
        10.0, description="share of the cluster that may be ejected at once (default 10)")


class RetryBudget(Model):
    """Linkerd's retry budget: retries at most `ratio` of recent requests plus a floor per second."""

    ratio: Annotated[float, Field(ge=0, le=10)] = Field(0.2, description="retries per request (default 0.2)")
    min_per_second: Annotated[float, Field(ge=0)] = Field(10.0, description="retries always allowed per second (default 10)")
    ttl: Duration = Field(10.0, description="window the ratio is computed over (default 10s)")


class Service(Model):
    versions: Annotated[dict[Name, Version], Field(min_length=1)]
    lb: LoadBalancer = LoadBalancer()
    connect_timeout: Duration = Field(1.0, description="upstream TCP connect timeout (default 1s)")
    idle_timeout: Duration = Field(
        4.0, description="a pooled keep-alive connection idle longer than this is closed, not reused; keep "
                         "it below the service's own keep-alive timeout (5s in Node, uvicorn, Apache) so it "
                         "never closes a connection as a request arrives; a `Keep-Alive: timeout=N` "
                         "answer shortens it to N-1s (default 4s)")
    circuit_breaker: CircuitBreaker | None = Field(None, description="per-endpoint breakers (default off)")
    outlier_detection: OutlierDetection | None = Field(
        OutlierDetection(), description="outlier ejection (default on, as Linkerd's failure accrual; null: off)")
    retry_budget: RetryBudget = RetryBudget()
    fault: Fault | None = Field(None, description="faults injected on every attempt to this service")
    mtls: Literal["STRICT", "PERMISSIVE", "DISABLE"] = Field(
        "DISABLE", description="the service's mTLS mode (Istio's names): its sidecars' inbound listener "
                               "presents the service's workload certificate and requires (STRICT) or accepts "
                               "(PERMISSIVE) mesh client certificates; every proxy calls it over mTLS and "
                               "checks its SPIFFE ID. DISABLE: plaintext (default DISABLE)")
    health_check: HealthCheck = Field(
        HealthCheck(), description="active health checks (default on, 1s); a new endpoint takes "
                                   "traffic once its first check passed")
    policies: list[Name] = Field(
        default_factory=list,
        description="policy blocks the sidecars apply to this service: callers' sidecars on calls to it "
                    "(timeout, retries, fault), its own sidecars at their inbound (authz, ...)")
    egress: Literal["allow", "deny"] = Field(
        "deny", description="in pods (sidecar.isolation: pod), what the service's sidecars do with its app's "
                            "calls to destinations that are not mesh services: deny (a 403, as Istio's "
                            "REGISTRY_ONLY) or allow (pass through to the original destination) (default deny)")
    plugins: list[Name] = Field(
        default_factory=list,
        description="user plugins (sidecar_inbound or sidecar_outbound) the sidecars run for this "
                    "service: its own sidecars on inbound flows, callers' sidecars on calls to it")


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
    cookies: dict[str, Annotated[StringMatch, BeforeValidator(_exact_shorthand)]] = Field(
        default_factory=dict, description="cookie name → match (A/B groups, opt-in cookies)"
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


class Sticky(Model):
    """Sticky split: a key hashed to one version, so a user does not flip between versions."""

    cookie: str | None = Field(None, description="cookie holding the key (e.g. a user or session id)")
    header: HeaderToken | None = Field(None, description="header holding the key")
    claim: str | None = Field(None, description="verified JWT claim holding the key (dotted path)")
    ttl: Duration | None = Field(
        None, description="with cookie: when the cookie is absent, set one with a random key valid "
                          "this long (default: do not set one)")

    @model_validator(mode="after")
    def _one_key(self) -> Sticky:
        _one_of(self, ("cookie", "header", "claim"))
        if self.ttl is not None and self.cookie is None:
            raise ValueError("ttl needs cookie")
        return self


class Forward(Model):
    """Send to a service: one version, or a weighted split across versions."""

    service: Name
    version: Name | None = Field(None, description="the one version to use")
    weights: dict[Name, Annotated[int, Field(ge=0, le=10_000)]] | None = Field(
        None, description="version → weight, e.g. {v1: 90, v2: 10}"
    )
    rewrite: Rewrite | None = None
    sticky: Sticky | None = Field(None, description="hash a key to pick the version (default random)")

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
    """A match and exactly one action: forward, direct, redirect or function. First match wins."""

    name: Name
    match: Match = Match()
    forward: Forward | None = None
    direct: Direct | None = None
    redirect: Redirect | None = None
    function: Name | None = Field(None, description="name of a function (`functions`) that answers the request")
    policies: list[Name] = Field(default_factory=list, description="names of policy blocks")
    plugins: list[Name] = Field(default_factory=list, description="names of the gateway plugins "
                                "this route runs (docs/howto/plugins.md)")

    @model_validator(mode="after")
    def _one_action(self) -> Route:
        _one_of(self, ("forward", "direct", "redirect", "function"))
        if self.forward and self.forward.rewrite and self.forward.rewrite.prefix is not None:
            path = self.match.path
            if path is None or path.prefix is None:
                raise ValueError("forward.rewrite.prefix needs match.path.prefix")
        return self


# ---------------------------------------------------------------------------------------------
# Policies: named blocks that routes refer to. Each kind is one optional field.


class Timeout(Model):
    request: Duration = Field(15.0, description="whole request deadline, all attempts (default 15s)")
    per_try: Duration | None = Field(None, description="deadline of one attempt (default: the request deadline)")


RETRY_ON = ("5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-status-codes")


class Backoff(Model):
    base: Duration = Field(0.025, description="first retry waits up to this (default 25ms)")
    max: Duration = Field(0.25, description="ceiling of the exponential back-off (default 250ms)")


class Retries(Model):
    """Envoy's retry policy. Each retry goes to an endpoint not tried yet when one is left."""

    attempts: Annotated[int, Field(ge=1, le=10)] = Field(
        2, description="tries in all, the first included (default 2)")
    retry_on: Annotated[list[Literal[RETRY_ON]], Field(min_length=1)] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["connect-failure", "reset", "reset-before-request"],
        description="which outcomes are retried (default connect-failure, reset, reset-before-request). "
                    "reset-before-request: a connection reset before a byte of the request was written, "
                    "retried whatever the method, as nothing can have run twice")
    retriable_status_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, description="statuses retried with retriable-status-codes")
    backoff: Backoff = Backoff()
    non_idempotent: bool = Field(False, description="also retry POST and PATCH (default false)")
    retry_stale_connection: Literal["idempotent", "never"] = Field(
        "idempotent", description="a reused keep-alive connection that ends before any response byte: "
                                  "send an idempotent request once more on a new connection (idempotent, Go's "
                                  "rule), or never; counted as an attempt either way (default idempotent)")

    @model_validator(mode="after")
    def _codes_need_the_kind(self) -> Retries:
        if self.retriable_status_codes and "retriable-status-codes" not in self.retry_on:
            raise ValueError("retriable_status_codes needs retriable-status-codes in retry_on")
        return self


class FaultDelay(Model):
    fixed: Duration
    percentage: Annotated[float, Field(ge=0, le=100)] = Field(100.0, description="share of requests delayed (default 100)")


class FaultAbort(Model):
    """Answer `status` instead of calling the upstream: by percentage, every Nth call, or for a
    while from the first call (then recover)."""

    status: Annotated[int, Field(ge=200, le=599)]
    percentage: Annotated[float, Field(ge=0, le=100)] = Field(100.0, description="share of requests aborted (default 100)")
    every_nth: Annotated[int, Field(ge=1)] | None = Field(None, description="fail only every Nth call")
    for_seconds: Duration | None = Field(None, description="fail for this long from the first call, then recover")

    @model_validator(mode="after")
    def _one_schedule(self) -> FaultAbort:
        if self.every_nth is not None and self.for_seconds is not None:
            raise ValueError("expected either every_nth or for_seconds, not both")
        return self


class Fault(Model):
    """Istio's fault injection plus stateful faults, applied to each upstream attempt."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    drip: Annotated[float, Field(gt=0)] | None = Field(None, description="upstream body arrives at this many bytes/s")
    reset_after: Annotated[int, Field(ge=0)] | None = Field(None, description="upstream resets after this many body bytes")
    header_triggered: bool = Field(False, description="honour the x-mitmesh-fault request header (default false)")

# Rate limits (Kong's rate-limiting plugin, on the `limits` library) ---------------------------

Count = Annotated[int, Field(ge=1, le=1_000_000_000)]
STORAGE_SCHEMES = ("memory", "redis://", "rediss://", "async+redis://", "async+rediss://")


def _check_storage(value: str) -> str:
    if value in ("memory", "memory://"):
        return "memory"
    if not value.startswith(STORAGE_SCHEMES[1:]):
        raise ValueError(f"expected memory or a Redis URI such as redis://127.0.0.1:6379/0 (got {show(value)})")
    return value


class Idempotency(Model):
    """Idempotency-Key at the proxy (IETF draft-ietf-httpapi-idempotency-key-header, Stripe's keys):
    the first request with a key is forwarded and its answer kept; a duplicate in flight gets 409,
    a later one the kept answer (marked `Idempotent-Replayed: true`), the same key with another
    request 422."""

    header: HeaderName = Field(
        "Idempotency-Key", description="the request header carrying the key (default Idempotency-Key)")
    ttl: Annotated[Duration, Field(gt=0)] = Field(
        86400.0, description="how long an answer is kept and replayed for its key (default 24h)")
    lock: Annotated[Duration, Field(gt=0)] = Field(
        60.0, description="how long a key stays in flight if its proxy dies before the answer; a duplicate "
                          "meanwhile gets 409 (default 60s)")
    storage: Annotated[str, AfterValidator(_check_storage)] = Field(
        "memory", description="memory (default: per worker) or redis://host:port/db (one record per key for "
                              "every worker and gateway using it)")
    methods: Annotated[list[Literal[METHODS]], Field(min_length=1)] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["POST", "PATCH"],
        description="methods the policy applies to; others pass untouched (default POST, PATCH)")
    required: bool = Field(False, description="a request of those methods without a key gets 400 (default false)")


class RateLimit(Model):
    """Requests allowed per key in one or more windows; over any of them the answer is a 429."""

    second: Count | None = Field(None, description="requests per second")
    minute: Count | None = Field(None, description="requests per minute")
    hour: Count | None = Field(None, description="requests per hour")
    day: Count | None = Field(None, description="requests per day")
    key: Literal["consumer", "ip", "header", "claim", "api_key"] = Field(
        "consumer", description="what is counted: the verified consumer (default), the client IP, "
                                "a header, a JWT claim, or api_key: each API key the route's "
                                "api_key policy verified, however it was sent (by its hash, never "
                                "the key); a request without the key is counted by its IP")
    header: HeaderToken | None = Field(
        None, description="the header, with key: header (required); one the route's "
                          "authentication reads a key or token from counts that credential as "
                          "verified, one named like a credential (authorization, cookie, "
                          "x-api-key …) by the hash of its value")
    claim: str | None = Field(None, description="the claim, with key: claim (dotted path)")
    strategy: Literal["fixed_window", "sliding_window", "moving_window"] = Field(
        "fixed_window", description="fixed_window (default, cheapest), sliding_window (weighted counter) "
                                    "or moving_window (exact, one entry per request)")
    storage: Annotated[str, AfterValidator(_check_storage)] = Field(
        "memory", description="memory (default: per worker) or redis://host:port/db (shared by every "
                              "worker and gateway using it)")
    fail_open: bool = Field(True, description="when the storage is unreachable: allow (default) or "
                                              "answer 503")
    storage_timeout: Annotated[Duration, Field(gt=0, le=10)] = Field(
        0.1, description="longest wait for the storage per request (default 100ms)")
    headers: bool = Field(
        True, description="send RateLimit-Limit, -Remaining, -Reset and -Policy on every answer of "
                          "the route (default); false keeps them from clients, as Kong's "
                          "hide_client_headers (a 429 keeps Retry-After; the decision log and "
                          "mitmweb still show them)")

    @model_validator(mode="after")
    def _valid(self) -> RateLimit:
        if all(getattr(self, w) is None for w in ("second", "minute", "hour", "day")):
            raise ValueError("expected at least one of second, minute, hour, day (got none)")
        if self.key == "header" and self.header is None:
            raise ValueError("key: header needs header: NAME")
        if self.key == "claim" and self.claim is None:
            raise ValueError("key: claim needs claim: NAME")
        if self.header is not None and self.key != "header":
            why = "; it counts the key the api_key policy verified, wherever it was sent"
            raise ValueError(f"header is only used with key: header (got key: {self.key}"
                             f"{why if self.key == 'api_key' else ''})")
        if self.claim is not None and self.key != "claim":
            raise ValueError(f"claim is only used with key: claim (got key: {self.key})")
        return self


class AuthFailures(Model):
    """Failed authentications (a wrong token, API key or client secret) counted per client IP; over
    the limit, that address gets a 429 with Retry-After on every route that authenticates, before
    its credentials are checked. Missing credentials are not failures (browsers retry with them)."""

    minute: Count | None = Field(20, description="failed authentications per minute (default 20)")
    hour: Count | None = Field(None, description="failed authentications per hour (default none)")
    storage: Annotated[str, AfterValidator(_check_storage)] = Field(
        "memory", description="memory (default: per worker) or redis://host:port/db (shared)")
    storage_timeout: Annotated[Duration, Field(gt=0, le=10)] = Field(
        0.1, description="longest wait for the storage per request (default 100ms; then not counted)")

    @model_validator(mode="after")
    def _valid(self) -> AuthFailures:
        if self.minute is None and self.hour is None:
            raise ValueError("expected minute or hour (got neither); `auth_failures: null` turns it off")
        return self


# API versioning ---------------------------------------------------------------------------------

SOURCES = ("path", "header", "media_type", "query")


def _date(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected a date such as 2027-06-30 (got {show(value)})") from None
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.timezone.utc)
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if isinstance(value, bool) or value is None:
        return value
    raise ValueError(f"expected a date such as 2027-06-30 (got {show(value)})")


Date = Annotated[datetime.datetime, BeforeValidator(_date)]


def _deprecated(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    try:
        return _date(value)
    except ValueError:
        raise ValueError(f"expected true, false or a date such as 2026-01-01 (got {show(value)})") from None


class ApiVersion(Model):
    """One version of an API: the cluster serving it, and whether (and until when) it lives."""

    service: Name | None = Field(None, description="service serving it (default: the route's service)")
    version: Name | None = Field(None, description="service version (cluster) serving it "
                                                   "(default: the version of the same name)")
    deprecated: Annotated[bool | datetime.datetime, BeforeValidator(_deprecated)] = Field(
        False, description="true, or the date it was deprecated: adds a Deprecation header")
    sunset: Date | None = Field(None, description="date it goes away: adds a Sunset header")
    successor: Name | None = Field(None, description="the version to move to: adds a Link header")
    link: str | None = Field(None, description="URL of the successor for the Link header "
                                               "(default: this request's URL with the successor version)")


class Versioning(Model):
    """Which API version a request wants (path, header, media type or query), and where it goes."""

    sources: Annotated[list[Literal[SOURCES]], Field(min_length=1)] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(SOURCES),
        description="where to look, in order (default path, header, media_type, query)")
    header: HeaderToken = Field("API-Version", description="header naming the version (default API-Version)")
    query: str = Field("api-version", description="query parameter naming the version (default api-version)")
    media_type: str = Field(
        "application/vnd.mitmesh",
        description="vendor media type in Accept: application/vnd.mitmesh.v2+json names v2")
    path_pattern: Regex = Field(r"v\d+", description="a path segment that names a version, right after "
                                                      "the route's prefix (default v\\d+)")
    strip: bool = Field(True, description="remove the version segment from the path sent upstream")
    default: Name | None = Field(None, description="version of requests that name none (default: 400)")
    versions: Annotated[dict[Name, ApiVersion], Field(min_length=1)]

    @model_validator(mode="after")
    def _valid(self) -> Versioning:
        # default and successor must name versions: checked with their own lines in load._references
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources: expected each source once (got {show(self.sources)})")
        return self


# Request and response transformation (Kong's request-transformer) -------------------------------

Template = Annotated[str, AfterValidator(template.check)]
JsonTemplate = Annotated[Any, AfterValidator(template.check_value)]


def _body_path(value: str) -> str:
    if not value or any(not part for part in value.split(".")):
        raise ValueError(f"expected a JSON field name, dotted for nested fields (got {show(value)})")
    return value


BodyPath = Annotated[str, AfterValidator(_body_path)]


class ResponseNames(Model):
    headers: list[HeaderToken] = Field(default_factory=list, description="header names")
    body: list[BodyPath] = Field(default_factory=list, description="JSON fields (a.b for nested)")


class RequestNames(ResponseNames):
    query: list[str] = Field(default_factory=list, description="query parameter names")


class ResponseRenames(Model):
    headers: dict[HeaderToken, HeaderToken] = Field(default_factory=dict, description="old → new name")
    body: dict[BodyPath, BodyPath] = Field(default_factory=dict, description="old → new field")


class RequestRenames(ResponseRenames):
    query: dict[str, str] = Field(default_factory=dict, description="old → new name")


class ResponseValues(Model):
    headers: dict[HeaderToken, Template] = Field(default_factory=dict, description="name → template")
    body: dict[BodyPath, JsonTemplate] = Field(default_factory=dict, description="field → JSON value; "
                                                                                "strings are templates")


class RequestValues(ResponseValues):
    query: dict[str, Template] = Field(default_factory=dict, description="name → template")


class PathTransform(Model):
    """Rewrite the upstream path: strip a prefix, a regex substitution, or a whole new path."""

    strip_prefix: str | None = Field(None, description="remove this prefix when the path has it")
    regex: Regex | None = Field(None, description="with substitution: a regex searched in the path")
    substitution: str | None = Field(None, description="replacement, \\1 or \\g<name> for captures")
    set: Template | None = Field(None, description="the new path, a template: /users/$(path.id)")

    @model_validator(mode="after")
    def _one(self) -> PathTransform:
        _one_of(self, ("strip_prefix", "regex", "set"))
        if (self.regex is None) != (self.substitution is None):
            raise ValueError("regex and substitution go together")
        for name in ("strip_prefix", "set"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{name}: expected a path starting with '/' (got {show(value)})")
        return self


class ResponseTransform(Model):
    """Applied in Kong's order: remove, rename, replace (if present), set, add (if absent), append."""

    remove: ResponseNames = ResponseNames()
    rename: ResponseRenames = ResponseRenames()
    replace: ResponseValues = Field(ResponseValues(), description="change a value that is present")
    set: ResponseValues = Field(ResponseValues(), description="set a value, present or not")
    add: ResponseValues = Field(ResponseValues(), description="add a value that is absent")
    append: ResponseValues = Field(ResponseValues(), description="add one more value (header line, "
                                                                 "query parameter, array item)")


class RequestTransform(ResponseTransform):
    remove: RequestNames = RequestNames()
    rename: RequestRenames = RequestRenames()
    replace: RequestValues = Field(RequestValues(), description="change a value that is present")
    set: RequestValues = Field(RequestValues(), description="set a value, present or not")
    add: RequestValues = Field(RequestValues(), description="add a value that is absent")
    append: RequestValues = Field(RequestValues(), description="add one more value")
    path: PathTransform | None = Field(None, description="rewrite the upstream path (before the other "
                                                         "operations, as Kong does)")


class Transform(Model):
    """Change requests before they go upstream and responses before they go back."""

    request: RequestTransform | None = None
    response: ResponseTransform | None = None
    max_body: Annotated[int, Field(ge=0, le=64 << 20)] = Field(
        1 << 20, description="larger bodies pass untouched (bytes, default 1 MiB)")


# Mirroring (Envoy's request_mirror_policies, plus a comparison of the answers) ----------------------


# JSON fields that name who answered: they differ between any two clusters (or instances) by
# design, so a mirror's comparison and `mitmesh replay` leave them out unless told otherwise
BY_DESIGN = ("request_id", "instance", "version", "zone")


class Mirror(Model):
    """Copy a share of the requests to another cluster; its answers are compared, never returned."""

    service: Name = Field(description="service to mirror to")
    version: Name | None = Field(None, description="its version (default: all versions equally)")
    percent: Annotated[float, Field(ge=0, le=100)] = Field(100.0, description="share of requests "
                                                                                "mirrored (default 100)")
    compare: bool = Field(True, description="compare status and body with the primary's (default true)")
    ignore: list[BodyPath] = Field(default_factory=lambda: list(BY_DESIGN), description=(
        "JSON fields left out of the comparison (a.b for nested); replaces the default "
        f"{', '.join(BY_DESIGN)} (fields that differ between clusters by design); [] compares all"))
    timeout: Annotated[Duration, Field(gt=0)] = Field(5.0, description="mirror request deadline (default 5s)")


class Policy(Model):
    timeout: Timeout | None = None
    retries: Retries | None = None
    fault: Fault | None = None
    jwt: Jwt | None = Field(None, description="JWT bearer tokens, verified against the issuer's JWKS")
    oauth2: OAuth2 | None = Field(None, description="opaque OAuth2 tokens, by introspection")
    api_key: ApiKey | None = Field(None, description="API keys per consumer")
    require: Require | None = Field(None, description="scopes or claims the caller must hold (403)")
    authz: Authz | None = Field(None, description="allow/deny by peer identity and request (403)")
    cors: Cors | None = Field(None, description="cross-origin requests and preflights")
    size_limit: SizeLimit | None = Field(None, description="request body (413) and header (431) limits")
    security_headers: SecurityHeaders | None = Field(None, description="security response headers")
    rate_limit: RateLimit | None = Field(None, description="requests per key and window")
    versioning: Versioning | None = Field(None, description="API version → cluster, deprecation headers")
    transform: Transform | None = Field(None, description="change headers, query, path and JSON bodies")
    mirror: Mirror | None = Field(None, description="copy requests to another cluster and compare")
    idempotency: Idempotency | None = Field(
        None, description="Idempotency-Key: one run per key, duplicates answered by the proxy")


# ---------------------------------------------------------------------------------------------


class AccessLog(Model):
    """One JSON line per request; secrets are never written."""

    enabled: bool = Field(True, description="write access log lines (default true)")
    path: str = Field("-", description="file, relative to the config file; '-' is stdout (default)")


class Tracing(Model):
    """OpenTelemetry traces over OTLP/HTTP (protobuf). Nothing is exported without an endpoint."""

    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces (default none)")
    sampling: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        1.0, description="share of new traces sampled; a sampled parent is always followed (default 1.0)")

    @model_validator(mode="after")
    def _http_url(self) -> Tracing:
        url = self.otlp_endpoint
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint: expected an http:// or https:// URL (got {show(url)})")
        return self


class Observability(Model):
    metrics: bool = Field(True, description="serve /metrics on the admin listener (default true)")
    access_log: AccessLog = AccessLog()
    tracing: Tracing = Tracing()


class MeshSettings(Model):
    trust_domain: str = Field("mitmesh.local", description="SPIFFE trust domain")
    namespace: Name = Field("demo", description="namespace of workload identities")
    identity: IdentitySettings = IdentitySettings()
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


class EtcdMember(Model):
    """One etcd member's client address."""

    address: Address
    port: Port


class EtcdTls(Model):
    """Mutual TLS to the etcd members (their --client-cert-auth): https, each member's certificate
    checked against `ca`, this proxy presenting `cert`. `tls: {}` takes every default."""

    ca: str | None = Field(
        None, description="PEM CA bundle the members' certificates must chain to, relative to the "
                          "config file (default: the mesh CA, <mesh.identity.dir>/mesh-ca.pem)")
    cert: str | None = Field(
        None, description="PEM client certificate this proxy presents, relative to the config file "
                          "(default: its own workload certificate, <mesh.identity.dir>/workload/"
                          "<name>.pem, name being a sidecar's service or gateway.identity)")
    key: str | None = Field(
        None, description="PEM private key of cert; given with cert (default: the workload "
                          "certificate's key, <mesh.identity.dir>/workload/<name>.key)")

    @model_validator(mode="after")
    def _cert_with_key(self) -> EtcdTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: name both, or neither for the workload "
                             "certificate")
        return self


class Etcd(Model):
    """Discovery through an etcd cluster: sidecars register under a lease, proxies watch."""

    endpoints: Annotated[list[Annotated[EtcdMember, BeforeValidator(split_hostport)]], Field(min_length=1)] = Field(
        description="client URLs of the etcd members as host:port, e.g. [127.0.0.1:2379]; any one "
                    "that answers will do")
    ttl: int = Field(5, ge=1, le=10, description="lease TTL in seconds (default 5): a killed sidecar "
                                                  "is gone from every proxy within it")
    tls: EtcdTls | None = Field(
        None, description="mutual TLS to the members (default: none, plain http, which lets anyone "
                          "who reaches etcd register an instance of any service; `mitmesh "
                          "validate` warns unless every member is on loopback)")


class Discovery(Model):
    """Where proxies find endpoints besides the static ones in `services`."""

    mdns: Mdns | None = Field(None, description="zeroconf discovery (default off: static endpoints only)")
    etcd: Etcd | None = Field(None, description="etcd discovery (default off); may run beside mdns: an "
                                                "endpoint both announce is one endpoint")


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
        description="the inbound listener: the only way in to the local app (default port 15006); "
                    "its TLS follows services.NAME.mtls, never a tls block here",
    )
    outbound: Annotated[Listener, _named("outbound")] = Field(
        Listener(name="outbound", port=15001),
        description="the outbound listener: the app's HTTP proxy to other services (default port 15001)",
    )
    admin: Admin = Field(Admin(port=15000), description="the admin listener (default port 15000)")
    drain: Duration = Field(
        2.0, description="graceful stop: time between the mDNS goodbye and closing the listeners (default 2s)"
    )
    http: Http = Field(Http(), description="how every sidecar reads requests on its inbound and outbound "
                                           "listeners: path normalization, timeouts, HTTP/2 limits")
    engine: Engine = Field("standard", description=ENGINE_DOC)
    first_address: Address = Field(
        "127.0.0.2", description="`mitmesh up` gives its first instance this loopback address and each "
                                 "next instance the next one (default 127.0.0.2)"
    )

    isolation: Literal["auto", "pod", "loopback"] = Field(
        "auto", description="how `mitmesh up` places instances: pod (each app and its sidecar in a network "
                            "namespace of its own, the app's traffic captured by nftables; Linux, as root), "
                            "loopback (each on a loopback address; any local process can reach the apps), "
                            "auto (pod where possible) (default auto); see docs/howto/pods.md")

    @model_validator(mode="after")
    def _plain_outbound(self) -> SidecarSettings:
        if self.inbound.tls is not None:
            raise ValueError("inbound.tls: a sidecar's inbound TLS follows its service's mtls mode "
                             "(services.NAME.mtls: STRICT | PERMISSIVE presents the service's workload "
                             "certificate and verifies callers'); remove this block (got a tls block)")
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
    functions: dict[Name, Function] = Field(default_factory=dict, description="serverless functions "
                                            "routes target with `function: NAME` (default none)")
    plugins: dict[Name, Plugin] = Field(default_factory=dict, description="user plugins: your own "
                                        "mitmproxy addons in a chain (docs/howto/plugins.md)")
    observability: Observability = Observability()
