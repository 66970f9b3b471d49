"""Warnings about a config that loads but is likely a mistake; `mitmesh validate` prints them.

A service exposed by two routes that authenticate differently, where one route lets a caller skip
a check the other makes (OWASP API Security Top 10, API5: broken function level authorization). A
route is weaker than another to the same service when it authenticates no one while the other does
(JWT, opaque token, API key, or an allow list of mTLS identities), or when both accept the same
kind of credential and it requires fewer scopes or claims. Routes whose credentials are of different
kinds (a JWT here, an mTLS identity there) each make their check.

A rate limit by `key: api_key` (the key an api_key policy verified) on a route or service without
an api_key policy: there it counts every request by its client IP (OWASP API4).

An admin listener (`gateway.admin`, `sidecar.admin`) on an address other than loopback.

etcd discovery over plain http (`discovery.etcd` without `tls`) to a member beyond loopback:
whoever reaches that member can register an instance of any service.

A request header the config reads (a route's match, a policy's key, token, version or limit header)
whose name holds an underscore, where `http.headers_with_underscores_action` drops or refuses such
headers before anything reads them: that match never matches, that key is never found.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.config.http import ALLOW
from mesh.config.schema import MeshConfig, Route
from mesh.config.source import Problem, Source
from mesh.config.types import loopback

TOKEN_KINDS = ("jwt", "oauth2", "api_key")


@dataclass(frozen=True)
class Auth:
    """What a route demands of a caller."""

    kinds: frozenset[str]  # credential kinds accepted: jwt, oauth2, api_key, mtls
    requires: frozenset[str]  # scopes and claim=value pairs that must be held

    @property
    def authenticates(self) -> bool:
        return bool(self.kinds or self.requires)

    def describe(self) -> str:
        if not self.authenticates:
            return "without authentication"
        names = {"jwt": "a JWT", "oauth2": "an OAuth2 token", "api_key": "an API key",
                 "mtls": "an allowed mTLS identity"}
        what = " or ".join(names[k] for k in sorted(self.kinds)) or "credentials"
        return what + (f" with {', '.join(sorted(self.requires))}" if self.requires else "")

    def skips(self, other: Auth) -> bool:
        """Whether a caller can pass this route without what `other` demands."""
        if not self.authenticates:
            return other.authenticates
        return bool(self.kinds & other.kinds) and bool(other.requires - self.requires)


def route_auth(config: MeshConfig, route: Route) -> Auth:
    """The route's authentication: its own policy blocks, then the gateway's defaults per kind."""
    found: dict[str, object] = {}
    for name in [*route.policies, *config.gateway.policies]:
        block = config.policies.get(name)
        for kind in (*TOKEN_KINDS, "require", "authz"):
            value = getattr(block, kind, None) if block is not None else None
            if value is not None:
                found.setdefault(kind, value)  # a kind the route sets wins over the default
    kinds = {k for k in TOKEN_KINDS if k in found}
    authz = found.get("authz")
    if authz is not None and authz.allow and all(r.principals or r.namespaces for r in authz.allow):
        kinds.add("mtls")
    require = found.get("require")
    requires = set()
    if require is not None:
        requires |= {f"scope {s}" for s in require.scopes}
        requires |= {f"claim {k}={v}" for k, values in require.claims.items() for v in values}
    return Auth(frozenset(kinds), frozenset(requires))


def _unkeyed_limits(src: Source, config: MeshConfig) -> list[Problem]:
    """Rate limits by `key: api_key` where no api_key policy verifies a key."""
    found: dict[str, list[str]] = {}  # policy block → where its limit has no key to count
    places = [(f"route {r.name}", [*r.policies, *config.gateway.policies]) for r in config.routes]
    places += [(f"service {name}", list(s.policies)) for name, s in config.services.items()]
    for where, refs in places:
        blocks = [(ref, config.policies[ref]) for ref in refs if ref in config.policies]
        ref = next((ref for ref, b in blocks if b.rate_limit is not None), None)  # the first wins
        if ref is None or config.policies[ref].rate_limit.key != "api_key":
            continue
        if not any(b.api_key is not None for _, b in blocks):
            found.setdefault(ref, []).append(where)
    return [src.problem(("policies", ref, "rate_limit", "key"), (
        f"warning: key: api_key counts the API keys an api_key policy verifies, but "
        f"{', '.join(where)} {'has' if len(where) == 1 else 'have'} no api_key policy: there every "
        f"request is counted by its client IP; use key: consumer or ip, or add an api_key policy"))
        for ref, where in found.items()]


def _exposed_admins(src: Source, config: MeshConfig) -> list[Problem]:
    """Admin listeners bound beyond loopback: their reading endpoints (/status, /metrics; /flows
    with the token) answer whoever reaches them (Envoy's advice: never expose the admin
    interface)."""
    out = []
    exposed = ("/status and /metrics answer whoever reaches it, /flows whoever has its token "
               "(Envoy's advice: never expose the admin interface)")
    if not loopback(address := config.gateway.admin.address):
        out.append(src.problem(("gateway", "admin", "address"), (
            f"warning: the gateway's admin listener binds {address}, not a loopback address: "
            f"{exposed}; keep it on 127.0.0.1")))
    if not loopback(address := config.sidecar.admin.address):
        # a sidecar's admin binds its instance's address (--address); this one names intent
        out.append(src.problem(("sidecar", "admin", "address"), (
            f"warning: {address} is not a loopback address: a sidecar's admin listener is meant "
            f"for the host only, as {exposed}; a sidecar binds it on its instance's own address "
            f"(--address), which should be loopback too")))
    return out


def _plain_etcd(src: Source, config: MeshConfig) -> list[Problem]:
    """etcd discovery without TLS to members other hosts can reach: etcd then checks no one."""
    etcd = config.discovery.etcd
    if etcd is None or etcd.tls is not None:
        return []
    return [src.problem(("discovery", "etcd", "endpoints", i), (
        f"warning: {m.address}:{m.port} is reached over plain http, not on loopback: whoever "
        f"reaches that member can register an instance of any service (or, with the store there, "
        f"push a config); serve etcd with --client-cert-auth and set discovery.etcd.tls "
        f"(docs/howto/etcd.md)"))
        for i, m in enumerate(etcd.endpoints) if not loopback(m.address)]


# policy kinds whose header names are not read from the request: they are set, or answered with
_NOT_READ = frozenset({"transform", "cors", "security_headers", "mirror", "function"})


def _read_headers(node, path: tuple) -> list[tuple[tuple, str]]:
    """Each `header: NAME` and `headers: [NAME] | {NAME: …}` under a config node, with its path."""
    out: list[tuple[tuple, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "header" and isinstance(value, str):
                out.append(((*path, key), value))
            elif key == "headers" and isinstance(value, (list, dict)):
                out += [((*path, key), name) for name in value if isinstance(name, str)]
            else:
                out += _read_headers(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _read_headers(value, (*path, i))
    return out


def _underscored_reads(src: Source, config: MeshConfig) -> list[Problem]:
    """Header names with `_` the config reads, where the listeners drop or refuse such headers."""
    actions = {where: http.headers_with_underscores_action for where, http in
               (("gateway", config.gateway.http), ("sidecar", config.sidecar.http))}
    if all(action == ALLOW for action in actions.values()):
        return []
    data = src.data if isinstance(src.data, dict) else {}
    found = []
    for i, route in enumerate(data.get("routes") or []):
        if isinstance(route, dict):
            found += _read_headers(route.get("match"), ("routes", i, "match"))
    for name, block in (data.get("policies") or {}).items():
        for kind, value in (block.items() if isinstance(block, dict) else ()):
            if kind not in _NOT_READ:
                found += _read_headers(value, ("policies", name, kind))
    doing = ", ".join(f"{where}.http.headers_with_underscores_action is {action}"
                      for where, action in actions.items() if action != ALLOW)
    return [src.problem(path, (
        f"warning: the header name {name!r} holds an underscore, but {doing}: such a header is "
        f"gone before anything reads it; use a dash ({name.replace('_', '-')!r}) or set ALLOW"))
        for path, name in found if "_" in name]


def warnings(src: Source, config: MeshConfig) -> list[Problem]:
    out: list[Problem] = (_unkeyed_limits(src, config) + _exposed_admins(src, config)
                          + _plain_etcd(src, config) + _underscored_reads(src, config))
    by_service: dict[str, list[tuple[int, Route, Auth]]] = {}
    for i, route in enumerate(config.routes):
        if route.forward is not None:
            by_service.setdefault(route.forward.service, []).append((i, route, route_auth(config, route)))
    for service, routes in by_service.items():
        for i, route, auth in routes:
            other = next(((j, r, a) for j, r, a in routes if j != i and auth.skips(a)), None)
            if other is None:
                continue
            j, stronger, demands = other
            out.append(src.problem(("routes", i), (
                f"warning: route {route.name} exposes service {service} {auth.describe()}, but route "
                f"{stronger.name} (line {src.line_of(('routes', j))}) requires {demands.describe()}: a "
                f"caller can skip that check through route {route.name}")))
    return out
