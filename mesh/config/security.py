"""Config models of the security features: workload identity, authentication, authorization and
edge hardening policies. Each policy kind is one optional field of `schema.Policy`.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from mesh.config.source import show
from mesh.config.types import METHODS, Cidr, Duration, HeaderName, Model, Name, Size, one_of

MtlsMode = Literal["STRICT", "PERMISSIVE"]
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA", "HS256", "HS384", "HS512")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _strings(value: Any) -> Any:
    """A claim value or list of values; scalars become their JSON-ish text (true, 42)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        if isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, (str, int, float)):
            out.append(str(v))
        else:
            raise ValueError(f"expected a string or a list of strings (got {show(value)})")
    return out


def _no_none_alg(value: Any) -> Any:
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and v.lower() == "none":
            raise ValueError(f"the 'none' algorithm is never allowed (got {show(v)})")
    return value


def _upper_methods(value: Any) -> Any:
    if isinstance(value, list):
        return [v.upper() if isinstance(v, str) else v for v in value]
    return value


def _http_url(value: str) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL (got {show(value)})")
    return value


def _pattern(value: Any) -> Any:
    """Istio's string match: exact, `prefix*`, `*suffix` or `*` (present)."""
    if isinstance(value, str) and "*" in value and not (
        value == "*" or (value.count("*") == 1 and (value.startswith("*") or value.endswith("*")))
    ):
        raise ValueError(f"expected an exact value, 'prefix*', '*suffix' or '*' (got {show(value)})")
    return value


def _path_pattern(value: Any) -> Any:
    value = _pattern(value)
    if isinstance(value, str) and not value.startswith(("/", "*")):
        raise ValueError(f"expected a path starting with '/' or '*' (got {show(value)})")
    return value


Claims = dict[str, Annotated[list[str], BeforeValidator(_strings)]]
Url = Annotated[str, BeforeValidator(_http_url)]
Pattern = Annotated[str, BeforeValidator(_pattern)]
PathPattern = Annotated[str, BeforeValidator(_path_pattern)]
Method = Literal[METHODS]  # type: ignore[valid-type]
Methods = Annotated[list[Method], BeforeValidator(_upper_methods)]  # type: ignore[valid-type]


# ---------------------------------------------------------------------------------------------
# Workload identity


class IdentitySettings(Model):
    """Workload certificates of the mesh (`mitmesh certs`): where they live, how long they last."""

    dir: str = Field("certs", description="directory of mesh-ca.pem and workload/<name>.pem, "
                                          "relative to the config file (default certs)")
    lifetime: Annotated[Duration, Field(ge=10.0, le=365 * 86400.0)] = Field(
        86400.0, description="validity of a workload certificate (default 24h)")
    renew_after: Annotated[float, Field(ge=0.1, le=0.9)] = Field(
        0.5, description="share of the lifetime after which a certificate is renewed (default 0.5)")
    reload_interval: Annotated[Duration, Field(ge=0.05, le=60.0)] = Field(
        1.0, description="how often proxies look for renewed certificate files (default 1s)")


# ---------------------------------------------------------------------------------------------
# Authentication


class TokenSource(Model):
    """Where a token is read from: a header (with an optional prefix such as 'Bearer ') or a cookie."""

    header: HeaderName | None = None
    prefix: str = Field("", description="with header: text before the token, matched case-insensitively")
    cookie: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> TokenSource:
        one_of(self, ("header", "cookie"))
        if self.cookie is not None and self.prefix:
            raise ValueError("prefix applies to header only")
        return self


BEARER = TokenSource(header="authorization", prefix="Bearer ")


class TokenAuth(Model):
    """What JWT and OAuth2 introspection share: where the token is, and what goes upstream."""

    token_from: Annotated[list[TokenSource], Field(min_length=1)] = Field(
        default_factory=lambda: [BEARER],
        description="where to look for the token, in order (default Authorization: Bearer)")
    forward_claims: dict[str, HeaderName] = Field(
        default_factory=dict, description="claim → request header set upstream, e.g. {sub: x-user}")
    forward_token: bool = Field(False, description="keep the token in the upstream request when it "
                                                   "authenticated the caller; a token beside a "
                                                   "verified API key is removed (default false)")
    max_token_size: Annotated[int, Field(ge=256, le=1 << 20)] = Field(
        8192, description="longer tokens are refused before decoding (default 8192 bytes)")


class Jwt(TokenAuth):
    """JSON Web Tokens verified locally against the issuer's JWKS."""

    issuer: str = Field(description="required `iss` claim")
    audiences: list[str] = Field(default_factory=list,
                                 description="accepted `aud` values; empty: not checked (default)")
    jwks_uri: Url | None = Field(None, description="where the signing keys are fetched (JWKS JSON)")
    jwks_file: str | None = Field(None, description="or a local JWKS file, relative to the config file")
    algorithms: Annotated[list[Literal[ALGORITHMS]], BeforeValidator(_no_none_alg),  # type: ignore[valid-type]
                          Field(min_length=1)] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        description="accepted algorithms (default RS256, ES256); a key is only used with "
                    "algorithms of its own type, so an RSA or EC key is never an HMAC secret")
    leeway: Annotated[Duration, Field(le=600.0)] = Field(
        30.0, description="clock skew allowed on exp, nbf and iat (default 30s)")
    cache_duration: Annotated[Duration, Field(ge=1.0)] = Field(
        300.0, description="how long fetched keys are used before a background refresh (default 5m)")
    unknown_kid_refresh: Annotated[Duration, Field(ge=0.0)] = Field(
        5.0, description="at most one refetch per this interval when a token names an "
                         "unknown key id (default 5s)")
    fetch_timeout: Annotated[Duration, Field(gt=0.0, le=60.0)] = Field(
        2.0, description="timeout of one JWKS fetch (default 2s)")

    @model_validator(mode="after")
    def _keys(self) -> Jwt:
        one_of(self, ("jwks_uri", "jwks_file"))
        return self


class OAuth2(TokenAuth):
    """OAuth2 access tokens checked by RFC 7662 introspection (for opaque tokens), cached briefly."""

    introspection_url: Url = Field(description="the authorization server's introspection endpoint")
    client_id: str = Field(description="the gateway's client id at the authorization server")
    client_secret: str | None = Field(None, description="its secret (or client_secret_env)")
    client_secret_env: str | None = Field(None, description="environment variable holding the secret")
    issuer: str | None = Field(None, description="required `iss` of the answer, if given")
    audiences: list[str] = Field(default_factory=list, description="accepted `aud` values (default any)")
    cache: Annotated[Duration, Field(ge=0.0, le=3600.0)] = Field(
        30.0, description="how long an answer is reused, never past the token's exp (default 30s)")
    timeout: Annotated[Duration, Field(gt=0.0, le=60.0)] = Field(
        2.0, description="timeout of one introspection call (default 2s)")

    @model_validator(mode="after")
    def _secret(self) -> OAuth2:
        one_of(self, ("client_secret", "client_secret_env"))
        if self.client_secret_env is not None and self.client_secret_env not in os.environ:
            raise ValueError(f"client_secret_env: environment variable is not set "
                             f"(got {show(self.client_secret_env)})")
        return self


def _sha256_list(value: Any) -> Any:
    value = _listify(value)
    if isinstance(value, list):
        for v in value:
            if not isinstance(v, str) or not _SHA256.fullmatch(v):
                raise ValueError("expected the SHA-256 of the key as 64 lowercase hex digits; "
                                 f"`mitmesh apikey new NAME` makes one (got {show(v)})")
    return value


class Consumer(Model):
    """One API consumer: the SHA-256 of each of its keys (never the keys themselves)."""

    key_sha256: Annotated[list[str], BeforeValidator(_sha256_list), Field(min_length=1)]
    claims: Claims = Field(default_factory=dict, description="claims this consumer carries (authz)")


class ApiKey(Model):
    """API keys per consumer, stored hashed."""

    header: HeaderName | None = Field("x-api-key", description="header carrying the key (default x-api-key)")
    query: str | None = Field(None, description="or a query parameter carrying it (default none)")
    consumers: Annotated[dict[Name, Consumer], Field(min_length=1)]
    forward_claims: dict[str, HeaderName] = Field(
        default_factory=lambda: {"consumer": "x-consumer"},
        description="claim → upstream header (default {consumer: x-consumer})")
    forward_key: bool = Field(False, description="keep the key in the upstream request when it "
                                                 "authenticated the caller; a key beside a verified "
                                                 "token is removed (default false)")

    @model_validator(mode="after")
    def _where(self) -> ApiKey:
        if self.header is None and self.query is None:
            raise ValueError("expected header or query (got none)")
        seen: dict[str, str] = {}
        for name, consumer in self.consumers.items():
            for digest in consumer.key_sha256:
                if digest in seen:
                    raise ValueError(f"consumers.{name}: key already belongs to {seen[digest]} "
                                     f"(got {show(digest)})")
                seen[digest] = name
        return self


class Require(Model):
    """What an authenticated caller must hold on this route; missing → 403."""

    scopes: list[str] = Field(default_factory=list, description="scopes that must all be granted")
    claims: Claims = Field(default_factory=dict,
                           description="claim → accepted values (one must match)")


# ---------------------------------------------------------------------------------------------
# Authorization (Istio's AuthorizationPolicy semantics)


class AuthzRule(Model):
    """A rule matches when every field given matches (a field matches when any value does)."""

    principals: list[Pattern] | None = Field(
        None, description="mTLS peer SPIFFE IDs, with or without spiffe://; 'prefix*', '*suffix', '*'")
    not_principals: list[Pattern] | None = None
    namespaces: list[Pattern] | None = Field(None, description="namespace of the mTLS peer")
    not_namespaces: list[Pattern] | None = None
    ip_blocks: list[Cidr] | None = Field(None, description="downstream address in these blocks")
    not_ip_blocks: list[Cidr] | None = None
    methods: Methods | None = None
    not_methods: Methods | None = None
    paths: list[PathPattern] | None = Field(None, description="exact, '/prefix*', '*suffix' or '*'")
    not_paths: list[PathPattern] | None = None
    claims: Claims | None = Field(None, description="verified claim → accepted values")


class Authz(Model):
    """DENY rules first; then, if `allow` is given, a request must match one of its rules."""

    deny: list[AuthzRule] = Field(default_factory=list, description="any match → 403")
    allow: list[AuthzRule] | None = Field(
        None, description="if given, only matching requests pass ([] allows nothing)")


# ---------------------------------------------------------------------------------------------
# Edge hardening


class IpFilter(Model):
    """Downstream addresses: deny wins; if `allow` is not empty, only those pass."""

    allow: list[Cidr] = Field(default_factory=list)
    deny: list[Cidr] = Field(default_factory=list)


def _origin(value: Any) -> Any:
    if isinstance(value, str) and value != "*" and not re.fullmatch(
            r"https?://(\*\.)?[A-Za-z0-9.-]+(:\d+)?", value):
        raise ValueError(f"expected '*' or an origin such as https://app.example.com or "
                         f"https://*.example.com (got {show(value)})")
    return value


class Cors(Model):
    """Cross-origin requests: preflights are answered here, before authentication."""

    allow_origins: Annotated[list[Annotated[str, BeforeValidator(_origin)]], Field(min_length=1)]
    allow_methods: Methods = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        description="default GET, HEAD, POST, PUT, PATCH, DELETE")
    allow_headers: list[HeaderName] = Field(
        default_factory=list, description="request headers allowed (default: those the preflight asks for)")
    expose_headers: list[HeaderName] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: Annotated[Duration, Field(le=86400.0)] = Field(600.0, description="preflight cache (default 10m)")

    @model_validator(mode="after")
    def _credentials(self) -> Cors:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_credentials needs explicit origins, not '*'")
        return self


class SizeLimit(Model):
    """Request size limits: a bigger body is answered 413, bigger headers 431."""

    max_body: Annotated[Size, Field(le=1 << 34)] = Field(
        8 << 20, description="request body in bytes (default 8MiB)")
    max_headers: Annotated[Size, Field(ge=1024, le=1 << 24)] = Field(
        128 << 10, description="all request header names and values in bytes (default 128KiB)")


class Hsts(Model):
    max_age: Annotated[int, Field(ge=0)] = Field(31536000, description="seconds (default one year)")
    include_subdomains: bool = True
    preload: bool = False


class SecurityHeaders(Model):
    """Response headers set when the upstream did not set them; HSTS only on HTTPS."""

    hsts: Hsts | None = Field(Hsts(), description="Strict-Transport-Security; null turns it off")
    content_type_options: str | None = Field("nosniff", description="X-Content-Type-Options")
    frame_options: Literal["DENY", "SAMEORIGIN"] | None = Field("DENY", description="X-Frame-Options")
    referrer_policy: str | None = Field("no-referrer", description="Referrer-Policy")
    content_security_policy: str | None = Field(None, description="Content-Security-Policy (default none)")
    headers: dict[HeaderName, str] = Field(default_factory=dict, description="any other header → value")
