"""The `mitmesh` command line: validate, up, gateway, bench, canary, certs."""

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


def _certs(args) -> int:
    from . import pki

    made = pki.init_edge(Path(args.dir), force=args.force)
    for p in made:
        print(f"wrote {p}")
    if not made:
        print(f"certificates in {args.dir} are present (use --force to replace them)")
    return 0


def _canary(args) -> int:
    from . import canary

    try:
        wanted = canary.parse_assignments(args.weights)
        changes = canary.set_weights(args.config, args.service, wanted, args.route)
    except canary.CanaryError as e:
        print(f"mitmesh canary: {e}", file=sys.stderr)
        return 1
    for c in changes:
        before = " ".join(f"{v}={w}" for v, w in c.before.items())
        after = " ".join(f"{v}={w}" for v, w in c.after.items())
        print(f"{args.config}: route {c.route}: {args.service} {before} -> {after}")
    print("running gateways reload the file within a second")
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

    b = sub.add_parser("bench", help="benchmark: direct, bare mitmdump, mitmesh gateway", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_bench)

    k = sub.add_parser("canary", help="canary releases: change a service's weights live")
    ksub = k.add_subparsers(dest="canary_command", required=True)
    ks = ksub.add_parser("set", help="set version weights in percent, e.g. `canary set catalog v2=25`; "
                                     "the other versions share the rest")
    ks.add_argument("service")
    ks.add_argument("weights", nargs="+", metavar="VERSION=PERCENT")
    ks.add_argument("--config", default="mesh.yaml")
    ks.add_argument("--route", default=None, help="only this route (default: every route splitting the service)")
    ks.set_defaults(func=_canary)

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
