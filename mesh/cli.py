"""The `mitmesh` command line: validate, up, gateway, sidecar, bench, certs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _validate(args) -> int:
    from .config import ConfigError, load

    status = 0
    for file in args.files:
        try:
            load(file)
        except ConfigError as e:
            print(e)
            print(f"{len(e.problems)} error(s) in {file}", file=sys.stderr)
            status = 1
        else:
            print("ok" if len(args.files) == 1 else f"{file}: ok")
    return status


def _up(args) -> int:
    from .launcher import up

    return up(args.config, web=args.web, web_port=args.web_port, workers=args.workers)


def _gateway(args) -> int:
    from . import supervisor

    workers = args.workers or supervisor.default_workers()
    return supervisor.serve(args.config, workers, args.verbosity)


def _sidecar(args) -> int:
    import os

    from . import supervisor
    from .workload import parse_workload

    spec = ",".join(f"{k}={v}" for k, v in (
        ("service", args.service), ("version", args.version), ("app", args.app),
        ("address", args.address), ("zone", args.zone), ("weight", args.weight),
        ("instance", args.instance), ("inbound", args.inbound_port),
        ("outbound", args.outbound_port), ("admin", args.admin_port)) if v not in (None, ""))
    try:
        parse_workload(spec)
    except ValueError as e:
        print(f"mitmesh sidecar: {e}", file=sys.stderr)
        return 2
    if args.workers > 1:
        return supervisor.serve(args.config, args.workers, args.verbosity, "sidecar", spec)
    # one worker: the sidecar is this one process (no supervisor), under -O like every worker
    argv = supervisor.worker_argv(Path(args.config).resolve(), [], "sidecar", args.verbosity, -1, spec)
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 1  # not reached


def _certs(args) -> int:
    from . import pki

    made = pki.init_edge(Path(args.dir), force=args.force)
    for p in made:
        print(f"wrote {p}")
    if not made:
        print(f"certificates in {args.dir} are present (use --force to replace them)")
    return 0


def _bench(args) -> int:
    from . import bench

    return bench.main(args.rest)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mitmesh", description="API gateway and service mesh on mitmproxy")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check config files; prints ok or every error")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.set_defaults(func=_validate)

    u = sub.add_parser("up", help="start the demo services and the gateway")
    u.add_argument("--config", default="mesh.yaml")
    u.add_argument("--web", action="store_true", help="run the gateway as mitmweb on 127.0.0.1")
    u.add_argument("--web-port", type=int, default=8081)
    u.add_argument("--workers", type=int, default=0, help="gateway workers (default: number of cores)")
    u.set_defaults(func=_up)

    g = sub.add_parser("gateway", help="run the gateway on the lean runtime, one worker per core")
    g.add_argument("--config", default="mesh.yaml")
    g.add_argument("--workers", type=int, default=0, help="worker processes (default: number of cores)")
    g.add_argument("--verbosity", default="info", choices=["error", "warn", "info", "debug"])
    g.set_defaults(func=_gateway)

    s = sub.add_parser("sidecar", help="run the sidecar of one service instance (inbound and outbound)")
    s.add_argument("--config", default="mesh.yaml")
    s.add_argument("--service", required=True, help="the service this instance belongs to")
    s.add_argument("--version", default="v1", help="its version (default v1)")
    s.add_argument("--app", required=True, metavar="HOST:PORT", help="where the local app listens")
    s.add_argument("--address", default="127.0.0.1",
                   help="this instance's address: listeners and mDNS bind here (default 127.0.0.1)")
    s.add_argument("--zone", default=None, help="its zone, announced for zone-aware balancing")
    s.add_argument("--weight", type=int, default=None, help="its load balancing weight (default 1)")
    s.add_argument("--instance", default=None, help="instance name (default service-version-address)")
    s.add_argument("--inbound-port", type=int, default=None, help="default: sidecar.inbound.port")
    s.add_argument("--outbound-port", type=int, default=None, help="default: sidecar.outbound.port")
    s.add_argument("--admin-port", type=int, default=None, help="default: sidecar.admin.port")
    s.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    s.add_argument("--verbosity", default="info", choices=["error", "warn", "info", "debug"])
    s.set_defaults(func=_sidecar)

    b = sub.add_parser("bench", help="benchmark: direct, bare mitmdump, mitmesh gateway", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_bench)

    c = sub.add_parser("certs", help="certificates")
    csub = c.add_subparsers(dest="certs_command", required=True)
    ci = csub.add_parser("init", help="make the demo edge CA and edge certificate if missing")
    ci.add_argument("--dir", default="certs")
    ci.add_argument("--force", action="store_true")
    ci.set_defaults(func=_certs)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # bench parses its own options
        from . import bench

        return bench.main(argv[1:])
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
