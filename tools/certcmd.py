"""`mitmesh certs …`: make the edge and mesh CAs (keys in <dir>/ca/) and the admin token, issue, show
and rotate workload certificates."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
from pathlib import Path

from mesh.runtime import admin, procs
from mesh.security import pki
from mesh.config import ConfigError, load
from mesh.config.schema import MeshConfig
from mesh.config.errors import BAD_INPUT, CommandError


def identities(config: MeshConfig) -> dict[str, str]:
    """Workload name → SPIFFE ID for every service and the gateway itself."""
    m = config.mesh
    names = [*config.services, config.gateway.identity]
    return {n: pki.spiffe_id(m.trust_domain, m.namespace, n) for n in names}


def identity_dir(config_path: Path, config: MeshConfig) -> Path:
    return (config_path.parent / config.mesh.identity.dir).resolve()


def _config(path: str | None) -> tuple[Path, MeshConfig] | None:
    """The config named, or ./mesh.yaml if present; None without one (defaults apply)."""
    p = Path(path or "mesh.yaml")
    if path is None and not p.exists():
        return None
    if not p.is_file():
        raise CommandError(f"config {path} does not exist", BAD_INPUT)
    return p.resolve(), load(p)


def _lifetime(args, config: MeshConfig | None) -> dt.timedelta:
    if args.lifetime is not None:
        from mesh.config.types import parse_duration
        try:
            return dt.timedelta(seconds=parse_duration(args.lifetime))
        except ValueError as e:
            raise CommandError(f"--lifetime: {e}", BAD_INPUT) from None
    seconds = config.mesh.identity.lifetime if config else pki.DEFAULT_LIFETIME.total_seconds()
    return dt.timedelta(seconds=seconds)


def main(args) -> int:
    try:
        found = _config(args.config)
    except ConfigError as e:
        if args.config is not None or args.certs_command == "rotate":
            print(e, file=sys.stderr)
            return 1
        # `just setup` runs `certs init` beside whatever mesh.yaml holds; a broken one must not stop it
        print(f"mitmesh certs: ignoring ./mesh.yaml, which does not load; using defaults:\n{e}",
              file=sys.stderr)
        found = None
    path, config = found if found else (None, None)
    directory = Path(args.dir) if args.dir else (identity_dir(path, config) if config else Path("certs"))
    trust_domain = config.mesh.trust_domain if config else "mitmesh.local"
    namespace = config.mesh.namespace if config else "demo"
    if args.certs_command == "init":
        made = pki.init_edge(directory, force=args.force)
        made += pki.init_mesh(directory, trust_domain, force=args.force)
        tokens = admin.token_paths(path, config) if config and not args.dir else [directory / admin.TOKEN_FILE]
        made += [t for t in tokens if admin.ensure_token(t)]
        for p in made:
            print(f"wrote {p}")
        if not made:
            print(f"certificates in {directory} are present (use --force to replace them)")
        return 0
    if args.certs_command == "issue":
        pki.init_mesh(directory, trust_domain)
        for name in args.names:
            spiffe = pki.spiffe_id(trust_domain, namespace, name)
            cert = pki.issue_workload(directory, name, spiffe, _lifetime(args, config))
            print(f"wrote {cert} for {spiffe}")
        return 0
    if args.certs_command == "operator":
        pki.init_mesh(directory, trust_domain)
        lifetime = _lifetime(args, None) if args.lifetime else pki.CONTROL_LIFETIME
        cert = pki.issue_operator(directory, lifetime)
        info = pki.describe(cert)
        print(f"wrote {cert} (CN {pki.OPERATOR_CN!r}, client only, expires {info['not_after']}): "
              f"`mitmesh config ... --cert {cert} --key {cert.with_suffix('.key')}` against an "
              f"etcds:// store")
        return 0
    if args.certs_command == "show":
        files = [directory / "edge.pem", pki.mesh_ca_cert(directory)]
        files += sorted((directory / pki.WORKLOADS).glob("*.pem"))
        # the control plane's, made by `mitmesh up --control-plane etcd` or `certs operator`
        files += [f for f in (pki.operator_paths(directory)[0],) if f.exists()]
        files += sorted((directory / pki.ETCD_DIR).glob("*.pem"))
        if args.names:
            files = [pki.workload_paths(directory, n)[0] for n in args.names]
        status = 0
        for f in files:
            try:
                info = pki.describe(f)
            except (OSError, ValueError) as e:
                print(f"{f}: cannot read: {e}")
                status = 1
                continue
            left = info["expires_in_s"]
            print(f"{f}: {info['spiffe_id'] or info['subject']}  expires {info['not_after']} "
                  f"({'expired' if left < 0 else f'in {left}s'})  key {info['key_mode']}  "
                  f"sha256 {info['fingerprint_sha256'][:16]}…")
        return status
    if args.certs_command == "rotate":
        if config is None:
            print("mitmesh certs rotate: needs --config (or ./mesh.yaml)", file=sys.stderr)
            return 1
        pki.init_mesh(directory, trust_domain)
        return rotate(directory, config, watch=args.watch, names=args.names or None)
    raise AssertionError(args.certs_command)


def rotate(directory: Path, config: MeshConfig, watch: bool = False,
           stop: procs.Stop | None = None, names: list[str] | None = None) -> int:
    """Renew the workload certificates that are due (all of the config's, or `names`); with
    `watch`, keep doing so each second."""
    stop = stop or procs.Stop()
    if watch and threading.current_thread() is threading.main_thread():
        stop.on_signals(signal.SIGTERM, signal.SIGINT)
    m = config.mesh
    wanted = {n: pki.spiffe_id(m.trust_domain, m.namespace, n) for n in names} if names else identities(config)
    lifetime = dt.timedelta(seconds=config.mesh.identity.lifetime)
    while True:
        for name, why in pki.renew_due(directory, wanted, lifetime, config.mesh.identity.renew_after):
            print(f"renewed workload certificate {name} ({why})", flush=True)
        if not watch or stop.wait(1.0):
            return 0


def add_parser(sub) -> None:
    c = sub.add_parser("certs", help="edge and mesh certificates")
    csub = c.add_subparsers(dest="certs_command", required=True)
    for name, text in (("init", "make the edge CA, edge certificate, mesh CA and admin token if missing"),
                       ("issue", "issue workload certificates (SPIFFE ID from the config)"),
                       ("operator", "issue the operator's client certificate (certs/operator.pem) "
                                    "for `mitmesh config` against an etcds:// store"),
                       ("show", "list certificates with their identity and expiry"),
                       ("rotate", "renew workload certificates that are due (--watch: keep renewing)")):
        p = csub.add_parser(name, help=text)
        p.add_argument("--config", default=None, help="config file (default ./mesh.yaml if present, "
                                                          "else built-in defaults)")
        p.add_argument("--dir", default=None, help="certificate folder (default mesh.identity.dir, "
                                                   "or certs without a config)")
        if name == "init":
            p.add_argument("--force", action="store_true", help="replace existing CAs and certificates "
                                                                "(default: keep them)")
        if name in ("issue", "show", "rotate"):
            p.add_argument("names", nargs="+" if name == "issue" else "*", metavar="NAME",
                           help="workload names, e.g. orders" + ("" if name == "issue" else " (default: all)"))
        if name == "issue":
            p.add_argument("--lifetime", default=None, help="e.g. 1h (default mesh.identity.lifetime)")
        if name == "operator":
            p.add_argument("--lifetime", default=None, help="e.g. 720h (default 90 days)")
        if name == "rotate":
            p.add_argument("--watch", action="store_true", help="keep renewing each second until stopped "
                                                                "(default: renew once and exit)")
        p.set_defaults(func=main)
