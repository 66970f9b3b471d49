"""The route table: routes compiled once at load and indexed by host and path, first match wins.

A request is tested only against the routes its host and path can reach (exact paths by dict,
prefixes by one dict lookup per distinct prefix length), so 10,000 routes do not mean 10,000 tests.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

from mesh.config import schema
from mesh.core.plan import Context, RoutePlan, Runtime, Uses, compile_plan, merged
from mesh.functions.event import RouteKey, route_key

HeaderGetter = Callable[[str], str | None]
QueryGetter = Callable[[], Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class StickyKey:
    """Where the key of a sticky split is read: a cookie, a header or a verified claim."""

    kind: str  # cookie | header | claim
    name: str
    ttl: float | None = None  # cookie only: set a fresh one when absent


@dataclass(frozen=True, slots=True)
class ForwardAction:
    service: str
    clusters: tuple[str, ...]  # "service/version"
    cumulative: tuple[int, ...]  # cumulative weights, same order as clusters
    rewrite_prefix: tuple[str, str] | None = None  # (matched prefix, replacement)
    rewrite_regex: tuple[re.Pattern, str] | None = None
    sticky: StickyKey | None = None

    def pick_cluster(self, rnd: float | None = None) -> str:
        if len(self.clusters) == 1:
            return self.clusters[0]
        total = self.cumulative[-1]
        point = (random.random() if rnd is None else rnd) * total
        return self.clusters[bisect.bisect_right(self.cumulative, point)]

    def rewrite(self, path: str) -> str:
        if self.rewrite_prefix is not None:
            old, new = self.rewrite_prefix
            rest = path[len(old):]
            if new.endswith("/") and rest.startswith("/"):
                rest = rest[1:]
            return (new + rest) or "/"
        if self.rewrite_regex is not None:
            pattern, sub = self.rewrite_regex
            return pattern.sub(sub, path) or "/"
        return path


@dataclass(frozen=True, slots=True)
class DirectAction:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RedirectAction:
    status: int
    location: str


@dataclass(frozen=True, slots=True)
class FunctionAction:
    """The route is answered by a function (addons/function.py), not by a cluster."""

    function: str
    route: RouteKey  # the event's routeKey, and the prefix whose rest is pathParameters.proxy


Action = ForwardAction | DirectAction | RedirectAction | FunctionAction


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    name: str
    action: Action
    methods: frozenset[str] | None
    headers: tuple[tuple[str, Callable[[str | None], bool]], ...]
    query: tuple[tuple[str, Callable[[str | None], bool]], ...]
    path_regex: re.Pattern | None
    plan: RoutePlan  # every policy of the route, compiled (mesh/core/plan.py)
    config: schema.Route
    cookies: tuple[tuple[str, Callable[[str | None], bool]], ...] = ()

    def matches(self, path: str, method: str, header: HeaderGetter, query: QueryGetter) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.path_regex is not None and self.path_regex.fullmatch(path) is None:
            return False
        for name, test in self.headers:
            if not test(header(name)):
                return False
        if self.query:
            params = query()
            for name, test in self.query:
                if not test(params.get(name)):
                    return False
        if self.cookies:
            jar = parse_cookies(header("cookie"))
            for name, test in self.cookies:
                if not test(jar.get(name)):
                    return False
        return True


def parse_cookies(header: str | None) -> dict[str, str]:
    """Cookie header → name → value (first wins). Cookie values cannot hold ';' or ',' (RFC 6265),
    so headers joined by ', ' split the same way."""
    jar: dict[str, str] = {}
    if not header:
        return jar
    for part in re.split(r"[;,]", header):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in jar:
            value = value.strip()
            jar[name] = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
    return jar


def string_matcher(m: schema.StringMatch) -> Callable[[str | None], bool]:
    if m.present is not None:
        want = m.present
        return lambda v: (v is not None) == want
    if m.exact is not None:
        x = m.exact
        return lambda v: v == x
    if m.prefix is not None:
        x = m.prefix
        return lambda v: v is not None and v.startswith(x)
    if m.suffix is not None:
        x = m.suffix
        return lambda v: v is not None and v.endswith(x)
    rx = re.compile(m.regex or "")
    return lambda v: v is not None and rx.fullmatch(v) is not None


@dataclass(slots=True)
class _Table:
    """Routes of one virtual host, indexed by path."""

    exact: dict[str, list[Route]] = field(default_factory=dict)
    prefixes: dict[int, dict[str, list[Route]]] = field(default_factory=dict)
    lengths: tuple[int, ...] = ()
    rest: list[Route] = field(default_factory=list)  # regex paths and routes without a path

    def add(self, route: Route) -> None:
        path = route.config.match.path
        if path is None or path.regex is not None:
            self.rest.append(route)
        elif path.exact is not None:
            self.exact.setdefault(path.exact, []).append(route)
        else:
            assert path.prefix is not None
            self.prefixes.setdefault(len(path.prefix), {}).setdefault(path.prefix, []).append(route)

    def freeze(self) -> None:
        self.lengths = tuple(sorted(self.prefixes))

    def match(self, path: str, method: str, header: HeaderGetter, query: QueryGetter) -> Route | None:
        best: Route | None = None
        lists = []
        hit = self.exact.get(path)
        if hit:
            lists.append(hit)
        n = len(path)
        for length in self.lengths:
            if length > n:
                break
            hit = self.prefixes[length].get(path[:length])
            if hit:
                lists.append(hit)
        if self.rest:
            lists.append(self.rest)
        for routes in lists:  # each list is in declaration order; keep the lowest index
            for r in routes:
                if best is not None and r.index >= best.index:
                    break
                if r.matches(path, method, header, query):
                    best = r
                    break
        return best


class RouteTable:
    """Virtual hosts (exact, '*.suffix', '*'), each with its indexed routes."""

    def __init__(self, routes: list[Route]):
        self.routes = routes
        self._exact: dict[str, _Table] = {}
        self._suffix: list[tuple[str, _Table]] = []
        self._any = _Table()
        suffix: dict[str, _Table] = {}
        for r in routes:
            for host in r.config.match.host:
                host = host.lower()
                if host == "*":
                    table = self._any
                elif host.startswith("*."):
                    table = suffix.setdefault(host[1:], _Table())
                else:
                    table = self._exact.setdefault(host, _Table())
                table.add(r)
        self._suffix = sorted(suffix.items(), key=lambda kv: -len(kv[0]))
        for t in (*self._exact.values(), *(t for _, t in self._suffix), self._any):
            t.freeze()

    def match(self, host: str, path: str, method: str, header: HeaderGetter,
              query: QueryGetter) -> Route | None:
        """The route for a request; the most specific host wins, falling back to less specific."""
        host = strip_port(host)
        table = self._exact.get(host)
        if table is not None and (r := table.match(path, method, header, query)):
            return r
        for suffix, table in self._suffix:
            if host.endswith(suffix) and (r := table.match(path, method, header, query)):
                return r
        return self._any.match(path, method, header, query)


def strip_port(host: str) -> str:
    """The name a route's `host` is matched with: lower case, without the port, and without one
    trailing dot (`Admin.Example.Com.:80` → `admin.example.com`, the same DNS name)."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name[:-1] if name[-1:] == "." else name


def compile_routes(config: schema.MeshConfig, runtime: Runtime | None = None, base: str = "",
                   uses: Uses | None = None) -> RouteTable:
    """Every route with its plan; a feature that cannot compile raises ValueError naming the route."""
    runtime = runtime or Runtime()
    uses = uses if uses is not None else Uses()
    routes = []
    for i, rc in enumerate(config.routes):
        # the route's own kinds win over the gateway's defaults
        models = merged(config, (*rc.policies, *config.gateway.policies))
        ctx = Context(config, rc, f"route {rc.name}", base, runtime, uses)
        m = rc.match
        routes.append(
            Route(
                index=i,
                name=rc.name,
                action=_compile_action(config, rc),
                methods=frozenset(m.methods) or None,
                headers=tuple((k.lower(), string_matcher(v)) for k, v in m.headers.items()),
                query=tuple((k, string_matcher(v)) for k, v in m.query.items()),
                path_regex=re.compile(m.path.regex) if m.path and m.path.regex else None,
                plan=compile_plan(models, ctx),
                config=rc,
                cookies=tuple((k, string_matcher(v)) for k, v in m.cookies.items()),
            )
        )
    return RouteTable(routes)


def _compile_action(config: schema.MeshConfig, rc: schema.Route) -> Action:
    if rc.direct is not None:
        d = rc.direct
        headers = dict(d.headers)
        if d.body is None:
            body = b""
        elif isinstance(d.body, str):
            body = d.body.encode()
            headers.setdefault("content-type", "text/plain; charset=utf-8")
        else:
            body = json.dumps(d.body).encode()
            headers.setdefault("content-type", "application/json")
        return DirectAction(d.status, body, tuple(headers.items()))
    if rc.redirect is not None:
        return RedirectAction(rc.redirect.status, rc.redirect.location)
    if rc.function is not None:
        path = rc.match.path
        return FunctionAction(rc.function, route_key(list(rc.match.methods), path and path.exact,
                                                     path and path.prefix))
    f = rc.forward
    assert f is not None
    service = config.services[f.service]
    if f.version is not None:
        weights = {f.version: 1}
    elif f.weights is not None:
        weights = {v: w for v, w in f.weights.items() if w > 0}
    else:
        weights = {v: 1 for v in service.versions}
    clusters, cumulative, total = [], [], 0
    for version, w in weights.items():
        total += w
        clusters.append(f"{f.service}/{version}")
        cumulative.append(total)
    prefix = regex = None
    if f.rewrite is not None:
        if f.rewrite.prefix is not None:
            assert rc.match.path is not None and rc.match.path.prefix is not None
            prefix = (rc.match.path.prefix, f.rewrite.prefix)
        else:
            regex = (re.compile(f.rewrite.regex or ""), f.rewrite.substitution or "")
    sticky = None
    if f.sticky is not None:
        kind = next(k for k in ("cookie", "header", "claim") if getattr(f.sticky, k) is not None)
        name = getattr(f.sticky, kind)
        sticky = StickyKey(kind, name.lower() if kind == "header" else name, f.sticky.ttl)
    return ForwardAction(f.service, tuple(clusters), tuple(cumulative), prefix, regex, sticky)
