"""The compiled plan of a route: one typed field per policy kind, in chain order, and the table of
features that compile them, so nothing is compiled or looked up by string on the request path.

A feature is registered in `FEATURES` as `Feature(field, kinds, compile)`: `kinds` are the
`Policy` fields it reads (one, or several that compile together such as authentication), and
`compile(model, ctx)` gets that model (or a `Models` of the kinds) and a `Context`; its result is
the plan's field. A compile function raises `ValueError("…")` for a config it cannot use; the
build reports it as `<file>:<line>: <route>: <message>` and the reload is rejected.

A feature's module is imported by its compile, when a route first uses it: a proxy whose config has
no JWT, no rate limit, no CORS, no transform loads none of their code or libraries (jwt, limits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Mapping

from mesh.config import schema
from mesh.policies.httpclient import Http
from mesh.resilience import settings
from mesh.security import mtls

if TYPE_CHECKING:
    from mesh.core import mirror, versioning
    from mesh.policies import authn, authz, cors, idempotency, ratelimit, securityheaders, transform
    from mesh.policies.jwks import JwksCache


class Runtime:
    """Live state that outlives reloads, passed to every build: keys fetched from issuers,
    introspection caches, the HTTP client they use, watched TLS files. A build reuses what the
    running config already has (same URL, same settings) and `keep` forgets what it no longer uses."""

    def __init__(self) -> None:
        self.http = Http()
        self.jwks: dict[str, JwksCache] = {}  # by URI or file
        self.introspectors: dict[tuple, authn.Introspector] = {}
        self.certs = mtls.CertStore()

    def keep(self, used: "Uses") -> None:
        """After an install: only what the live config uses stays cached."""
        self.jwks, self.introspectors = dict(used.jwks), dict(used.introspectors)


@dataclass
class Uses:
    """What one build took from (or added to) the runtime."""

    jwks: dict[str, JwksCache] = field(default_factory=dict)
    introspectors: dict[tuple, authn.Introspector] = field(default_factory=dict)


@dataclass
class Context:
    """What a feature's compile may read: the whole config, the route, where to report, the
    config file's folder (relative paths), the runtime and the record of what this build uses."""

    config: schema.MeshConfig
    route: schema.Route
    where: str  # "route NAME" or "service NAME": for error texts and policy names
    base: str
    runtime: Runtime
    uses: Uses
    # the route's policy models by kind (`merged`): what a feature may need to know of another's
    # config (a rate limit: which headers the route's authentication reads credentials from)
    models: Mapping[str, object] = field(default_factory=dict)

    def jwks(self, j: schema.Jwt) -> JwksCache:
        from mesh.policies.jwks import JwksCache

        source = j.jwks_uri or os.path.join(self.base, j.jwks_file or "")
        cache = self.uses.jwks.get(source) or self.runtime.jwks.get(source)
        if cache is None:
            cache = JwksCache(source, self.runtime.http, ttl=j.cache_duration,
                              unknown_kid_refresh=j.unknown_kid_refresh, timeout=j.fetch_timeout,
                              is_file=j.jwks_file is not None)
        self.uses.jwks[source] = cache
        return cache

    def introspector(self, o: schema.OAuth2) -> authn.Introspector:
        from mesh.policies import authn

        k = (o.introspection_url, o.client_id, o.cache, o.timeout, o.issuer, tuple(o.audiences))
        found = self.uses.introspectors.get(k) or self.runtime.introspectors.get(k) \
            or authn.Introspector(o, self.runtime.http, authn.secret_of(o, os.environ))
        self.uses.introspectors[k] = found
        return found


Models = SimpleNamespace  # the models of a feature that reads several kinds, by kind


@dataclass(frozen=True, slots=True)
class Feature:
    field: str  # the RoutePlan field it fills
    kinds: tuple[str, ...]  # the Policy fields it reads
    compile: Callable[[Any, Context], object]


def _authn(m: Models, ctx: Context) -> authn.RouteAuthn:
    from mesh.policies import authn

    return authn.RouteAuthn(
        ctx.route.name, jwt_verifier=authn.JwtVerifier(m.jwt, ctx.jwks(m.jwt)) if m.jwt else None,
        introspector=ctx.introspector(m.oauth2) if m.oauth2 else None,
        api_keys=authn.ApiKeys(m.api_key) if m.api_key else None, require=m.require)


def _cors(m, ctx: Context) -> cors.CorsPolicy:
    from mesh.policies import cors

    return cors.compile_cors(m)


def _versioning(m, ctx: Context) -> versioning.Versioning:
    from mesh.core import versioning

    return versioning.compile(m, ctx.route)


def _authz(m, ctx: Context) -> authz.Policy:
    from mesh.policies import authz

    return authz.compile_policy(m, ctx.where)


def _rate_limit(m, ctx: Context) -> ratelimit.Policy:
    from mesh.policies import ratelimit

    return ratelimit.compile(m, ctx.route, ctx.models)


def _idempotency(m, ctx: Context) -> idempotency.Policy:
    from mesh.policies import idempotency

    return idempotency.compile(m)


def _transform(m, ctx: Context) -> transform.Transform:
    from mesh.policies import transform

    return transform.compile(m, ctx.route)


def _mirror(m, ctx: Context) -> mirror.Mirror:
    from mesh.core import mirror

    return mirror.compile(m, ctx.route, ctx.config)


def _security_headers(m, ctx: Context) -> securityheaders.Headers:
    from mesh.policies import securityheaders

    return securityheaders.compile(m)


# The features of a route, in chain order (addons/chain.py). A new policy kind: one line here, one
# optional field on RoutePlan and on schema.Policy; its compile imports its module.
FEATURES: tuple[Feature, ...] = (
    Feature("cors", ("cors",), _cors),
    Feature("size_limit", ("size_limit",), lambda m, ctx: m),
    Feature("versioning", ("versioning",), _versioning),
    Feature("authn", ("jwt", "oauth2", "api_key", "require"), _authn),
    Feature("authz", ("authz",), _authz),
    Feature("rate_limit", ("rate_limit",), _rate_limit),
    Feature("idempotency", ("idempotency",), _idempotency),
    Feature("transform", ("transform",), _transform),
    Feature("mirror", ("mirror",), _mirror),
    Feature("forward", ("timeout", "retries", "fault"), lambda m, ctx: settings.compile(m)),
    Feature("security_headers", ("security_headers",), _security_headers),
)


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Everything a route runs, compiled; None where the route has no such policy. Read by the
    addon of each field (named beside it), never by kind string."""

    cors: cors.CorsPolicy | None = None  # Cors
    size_limit: schema.SizeLimit | None = None  # SizeLimit
    versioning: versioning.Versioning | None = None  # Versioning
    authn: authn.RouteAuthn | None = None  # Authn
    authz: authz.Policy | None = None  # Authz
    rate_limit: ratelimit.Policy | None = None  # RateLimit
    idempotency: idempotency.Policy | None = None  # Idempotency
    transform: transform.Transform | None = None  # Transform
    mirror: mirror.Mirror | None = None  # Mirror
    forward: settings.RouteResilience = settings.compile(Models(timeout=None, retries=None, fault=None))  # Forward, Faults
    security_headers: securityheaders.Headers | None = None  # SecurityHeaders
    models: Mapping[str, object] = field(default_factory=dict)  # kind → config model, for /status and tools
    # the policy fields above that are set: the stages this route runs (addons/dispatch.py), by field
    used: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "used", frozenset(
            f.field for f in FEATURES if f.field != "forward" and getattr(self, f.field) is not None))

    def uses(self, kind: str) -> bool:
        return kind in self.models


def merged(config: schema.MeshConfig, refs) -> dict[str, object]:
    """Policy kind → config model from named blocks (the first block naming a kind wins)."""
    models: dict[str, object] = {}
    for ref in refs:
        block = config.policies[ref]
        for kind in type(block).model_fields:
            value = getattr(block, kind)
            if value is not None:
                models.setdefault(kind, value)
    return models


def compile_plan(models: Mapping[str, object], ctx: Context) -> RoutePlan:
    """The plan of one route from its merged policy models; a compile's ValueError names the route."""
    values: dict[str, object] = {"models": dict(models)}
    ctx = replace(ctx, models=values["models"])
    for f in FEATURES:
        if f.field != "forward" and not any(k in models for k in f.kinds):
            continue
        model = (models.get(f.kinds[0]) if len(f.kinds) == 1
                 else Models(**{k: models.get(k) for k in f.kinds}))
        try:
            values[f.field] = f.compile(model, ctx)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{ctx.where}: {f.field}: {e}") from None
    return RoutePlan(**values)


PLAN_FIELDS = tuple(f.name for f in fields(RoutePlan) if f.init)
