"""One pass from a config file to a Snapshot: load and validate, compile every route's plan, the
listeners, their TLS contexts and the upstream identity. Blocking: run it off the event loop.

Anything that cannot be used (a certificate file, a regex, a JWKS URL) raises ConfigError with
`<file>:<line>: <key path>: <problem>`, so a reload is rejected and the old snapshot keeps serving;
installing the result (MeshState.install) is a pointer swap of a finished object.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os

from discovery import etcdtls
from mesh import config as meshconfig
from mesh.config import ConfigError
from mesh.config.plugins import PluginPlan, compile_plugins
from mesh.config.source import Problem, Source
from mesh.core import heads, sidecar
from mesh.core.plan import Runtime, Uses
from mesh.core.routing import RouteTable, compile_routes
from mesh.core.state import Bound, Snapshot, TlsPlan, admin_of, listeners_of
from mesh.core.workload import Workload
from mesh.functions import spec
from mesh.security import mtls, pki


def build(path: str, runtime: Runtime | None = None, workload: Workload | None = None) -> Snapshot:
    """Read, validate and compile a config file for this proxy (a sidecar passes its workload)."""
    with open(path, "rb") as f:
        raw = f.read()
    return build_text(raw.decode("utf-8", "replace"), path, hashlib.sha256(raw).hexdigest()[:12], runtime, workload)


def build_text(text: str, file: str, digest: str | None = None, runtime: Runtime | None = None,
               workload: Workload | None = None) -> Snapshot:
    """Validate and compile a config's text; `file` names it in errors, and relative paths in it
    resolve against its folder (a config from etcd: the proxy's working folder)."""
    config, src = meshconfig.load_source(text, file)
    return compile_config(config, file, digest or hashlib.sha256(text.encode()).hexdigest()[:12], runtime,
                          workload, src)


def compile_config(config: meshconfig.MeshConfig, path: str, digest: str = "", runtime: Runtime | None = None,
                   workload: Workload | None = None, src: Source | None = None) -> Snapshot:
    """The snapshot of a validated config (`src`, its parsed text, places user plugins' options);
    a feature that cannot compile is a ConfigError. A sidecar compiles its own routes only (as an
    Envoy sidecar gets only its own): the gateway's routes, functions and defaults, and the code of
    the features only they use (JWT, CORS, transforms, rate limits), stay out of it."""
    runtime = runtime or Runtime()
    base = os.path.dirname(os.path.abspath(path))
    uses = Uses()
    gateway = workload is None
    try:
        routes = compile_routes(config, runtime, base, uses) if gateway else RouteTable([])
        functions = spec.compile_all(config.functions, path) if gateway else {}
        sidecar_routes = sidecar.routes_of(config, workload, runtime, base, uses) if not gateway else {}
    except ValueError as e:
        raise ConfigError([Problem(path, 1, (), str(e))]) from None
    listeners = listeners_of(config, workload)
    return Snapshot(
        config=config, file=path, digest=digest, routes=routes, workload=workload,
        listeners=listeners, admin=admin_of(config, workload),
        zone=workload.zone if workload else config.gateway.zone,
        region=workload.region if workload else config.gateway.region,
        plugins=compile_plugins(config, src, base) if src is not None else PluginPlan(),
        sidecar_routes=sidecar_routes, uses=uses, functions=functions,
        security_headers=default_security_headers(config) if gateway else None,
        tls=tls_plan(config, path, workload, listeners, runtime.certs),
        ip_filters=ip_filters(config), claim_headers=claim_headers(config),
        auth_failures=auth_failures(config) if gateway else None,
        etcd_tls=etcd_tls(config, path, workload, src),
    )


def default_security_headers(config: meshconfig.MeshConfig):
    """The security headers of `gateway.policies`, for answers no route sets them on."""
    default = next((config.policies[n].security_headers for n in config.gateway.policies
                    if config.policies[n].security_headers is not None), None)
    if default is None:
        return None
    from mesh.policies import securityheaders

    return securityheaders.compile(default)


def auth_failures(config: meshconfig.MeshConfig):
    """The limiter of failed authentications per client address (`gateway.auth_failures`)."""
    if config.gateway.auth_failures is None:
        return None
    from mesh.policies import ratelimit

    return ratelimit.compile_auth_failures(config.gateway.auth_failures)


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def ip_filters(config: meshconfig.MeshConfig) -> dict[str, tuple[Networks, Networks]]:
    """Listener name → (allow, deny) networks (addons/ipfilter.py)."""
    def nets(blocks: list[str]) -> Networks:
        return tuple(ipaddress.ip_network(b) for b in blocks)
    return {lst.name: (nets(lst.ip_filter.allow), nets(lst.ip_filter.deny))
            for lst in config.gateway.listeners
            if lst.ip_filter is not None and (lst.ip_filter.allow or lst.ip_filter.deny)}


def claim_headers(config: meshconfig.MeshConfig) -> frozenset[bytes]:
    """Every header any authentication policy of the config sets from verified claims, folded
    (`heads.fold`), so that addons/sanitize.py removes each spelling a CGI/WSGI upstream reads alike."""
    names: set[bytes] = set()
    for policy in config.policies.values():
        for kind in (policy.jwt, policy.oauth2, policy.api_key):
            if kind is not None:
                names.update(heads.fold(h.encode("latin-1")) for h in kind.forward_claims.values())
    return frozenset(names)


def identity_of(config: meshconfig.MeshConfig, workload: Workload | None) -> str:
    """Whose workload certificate this proxy presents upstream: a sidecar its service's, the
    gateway `gateway.identity`."""
    return workload.service if workload is not None else config.gateway.identity


def tls_plan(config, path: str, workload: Workload | None, listeners: tuple[Bound, ...],
             store: mtls.CertStore) -> TlsPlan:
    """Listener TLS contexts (by address) and the client context for mTLS upstreams, loaded now:
    a file that cannot be used rejects the config."""
    base = os.path.dirname(os.path.abspath(path))
    me = identity_of(config, workload)
    mesh_ca = mtls.workload_files(base, config.mesh.identity.dir, me)[2]
    contexts = {}
    for bound in listeners:
        lst = bound.listener
        if lst.tls is None:
            continue
        t = lst.tls
        cert, key = (os.path.join(base, p) for p in (t.cert, t.key))
        client_ca = (os.path.join(base, t.client_ca) if t.client_ca else mesh_ca) if t.mtls else None
        ca_keys = os.path.realpath(os.path.join(base, config.mesh.identity.dir, pki.CA_DIR))
        if os.path.commonpath([os.path.realpath(key), ca_keys]) == ca_keys:
            _fail(path, f"{bound.path}.tls.key: a CA's private key is never given to a proxy (it could "
                        f"mint any identity); use the listener's own key (got {t.key!r})")
        try:  # peers' SPIFFE IDs must lie in the trust domain; with the mesh CA they need one
            contexts[(lst.address, lst.port)] = store.server(
                cert, key, http2=t.http2, client_ca=client_ca, mode=t.mtls,
                trust_domain=config.mesh.trust_domain, need_spiffe=not t.client_ca)
        except Exception as e:  # OSError, ValueError, OpenSSL.SSL.Error
            _fail(path, _unusable(base, workload, bound, client_ca, e))
    wanted = frozenset(name for name, svc in config.services.items() if svc.mtls != "DISABLE")
    cert, key, ca = mtls.workload_files(base, config.mesh.identity.dir, me)
    client, missing, error = None, "", ""
    try:  # also without mTLS services: endpoints that discovery announces as https need it
        client = store.client(cert, key, ca)
    except (OSError, ValueError) as e:
        if wanted:  # fatal where TLS is served (addons/tls.py at start, addons/config.py on reload)
            error = (f"{path}:1: {'gateway.identity' if workload is None else 'sidecar'}: cannot load the "
                     f"workload certificate of {me} for mTLS upstreams ({', '.join(sorted(wanted))}): "
                     f"{e}; `mitmesh certs issue {me}` makes one (got {me!r})")
        missing = f"cannot load the workload certificate of {me} ({e}); `mitmesh certs issue {me}` makes one"
    names = {(b.listener.address, b.listener.port): b.listener.name for b in listeners
             if b.listener.tls and b.listener.tls.mtls}
    upstreams = mtls.Upstreams(wanted, client, config.mesh.trust_domain, config.mesh.namespace, missing)
    return TlsPlan(contexts, names, upstreams, tuple(contexts.values()) + ((client,) if client else ()), error)


def etcd_tls(config: meshconfig.MeshConfig, path: str, workload: Workload | None,
             src: Source | None) -> etcdtls.EtcdTls | None:
    """The files this proxy presents to discovery.etcd's members (`tls`), resolved against the
    config's folder. A file the config names that is not there rejects the config; the default,
    the proxy's workload certificate, is issued by `mitmesh up` or `mitmesh certs issue`, so it
    is checked when the proxy connects (the error names it in /status)."""
    etcd = config.discovery.etcd
    if etcd is None or etcd.tls is None:
        return None
    base = os.path.dirname(os.path.abspath(path))
    me = identity_of(config, workload)
    cert, key, ca = mtls.workload_files(base, config.mesh.identity.dir, me)
    given = {"ca": etcd.tls.ca, "cert": etcd.tls.cert, "key": etcd.tls.key}
    problems = []
    for name, value in given.items():
        if value is not None and not os.path.isfile(os.path.join(base, value)):
            where = ("discovery", "etcd", "tls", name)
            line = src.line_of(where) if src is not None else 1
            problems.append(Problem(path, line, where, f"no such file (got {value!r})"))
    if problems:
        raise ConfigError(problems)
    files = {k: os.path.join(base, v) if v is not None else default
             for (k, v), default in zip(given.items(), (ca, cert, key))}
    return etcdtls.EtcdTls(**files, what="discovery.etcd.tls")


def _fail(path: str, text: str):
    raise ConfigError([Problem(path, 1, (), text)])


def _unusable(base: str, workload: Workload | None, bound: Bound, client_ca: str | None, e: Exception) -> str:
    """The config error of a listener whose certificate files cannot be used."""
    t = bound.listener.tls
    missing = [p for p in (t.cert, t.key) if not os.path.exists(os.path.join(base, p))]
    if missing:  # OpenSSL's own words for a missing file are a list of empty tuples
        e = f"no such file: {', '.join(missing)}"
    if bound.path.startswith("services."):  # a sidecar's inbound, from its service's mtls mode
        service = workload.service
        return (f"{bound.path}: {t.mtls} needs the workload certificate of {service}: "
                f"cannot use {t.cert} with key {t.key}: {e}; `mitmesh certs issue {service}` makes one "
                f"(got {t.mtls!r})")
    what = f"client CA {client_ca}, " if client_ca else ""
    return (f"{bound.path}.tls: cannot use {what}certificate {t.cert} with key {t.key}: "
            f"{e} (got {os.path.join(base, t.cert)!r})")
