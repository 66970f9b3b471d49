"""The `mitmesh` command line: validate, up, gateway, sidecar, function, bench, canary, certs, record, replay, scenario,
traces, docs."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from pathlib import Path

from mesh.config import ConfigError
from mesh.config.errors import BAD_INPUT, FAILED, CommandError
from mesh.config.schema import BY_DESIGN


def config_file(text: str) -> Path | str:
    """A --config that exists (checked before anything starts, so the error is one line), or an
    etcd[s]://HOST:PORT/MESH config store, returned as given."""
    from mesh.runtime.store import is_location, parse_location

    if is_location(text):
        try:
            parse_location(text)
        except ValueError as e:
            raise CommandError(f"--config: {e}", BAD_INPUT) from None
        return text
    path = Path(text)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        hint = " here (run from the folder holding it, or name it with --config FILE)" if text == "mesh.yaml" else ""
        raise CommandError(f"config {text} {what}{hint}", BAD_INPUT)
    return path


def admin_url(text: str) -> str:
    """argparse type: an http(s) URL with a host, such as http://127.0.0.1:9901."""
    parts = urllib.parse.urlsplit(text)
    try:
        parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected a URL such as http://127.0.0.1:9901 (got {text!r})")
    return text.rstrip("/")


def port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535 (got {text!r})")
    return int(text)


def address(text: str) -> str:
    """argparse type: an IP address to bind, such as 127.0.0.2."""
    from .config.types import check_address

    try:
        return check_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def name(text: str) -> str:
    """argparse type: a workload name, as the config names services (a file name in certs/)."""
    from .config.types import check_name

    try:
        return check_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def count(text: str) -> int:
    """argparse type: a whole number >= 0 (workers: 0 means one per core)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (got {text!r})")
    return int(text)


def seconds(text: str) -> float:
    """argparse type: a duration in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0 (got {text!r})")
    return value


def _load_plugins(file: str) -> None:
    from mesh.core.build import build
    from mesh.runtime import plugins

    problems = []
    for spec in build(file).plugins.plugins:
        try:
            plugins.load(spec)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)


def _validate(args) -> int:
    from mesh.config import ConfigError, load_text
    from mesh.config.lint import warnings
    from mesh.config.source import parse
    from mesh.functions.spec import import_problems

    status = 0
    for file in args.files:
        if not Path(file).is_file():
            print(f"{file}: no such file", file=sys.stderr)
            status = BAD_INPUT
            continue
        try:
            text = Path(file).read_text()
            config = load_text(text, file)
            _load_plugins(file)  # their code imports and their options validate, as the proxy loads them
        except OSError as e:
            print(f"{file}:1: cannot read file: {e.strerror}")
            status = max(status, FAILED)
        except ConfigError as e:
            print(e)
            print(f"{len(e.problems)} error(s) in {file}", file=sys.stderr)
            status = max(status, FAILED)
        else:
            src = parse(text, file)
            problems = import_problems(src, config.functions)
            if problems:
                print(ConfigError(problems))
                print(f"{len(problems)} error(s) in {file}", file=sys.stderr)
                status = max(status, FAILED)
                continue
            for warning in warnings(src, config):  # printed, not fatal
                print(warning)
            print("ok" if len(args.files) == 1 else f"{file}: ok")
    return status


def _fork_server_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fork-server", dest="fork_server", action="store_false",
                   help="start every proxy as its own Python instead of forking one preloaded engine "
                        "(docs/howto/fork-server.md; also MITMESH_FORK_SERVER=0)")


def _no_fork_server(args) -> None:
    if not getattr(args, "fork_server", True):  # read by every process below: launcher, supervisor
        os.environ["MITMESH_FORK_SERVER"] = "0"


def _up(args) -> int:
    from tools.launcher import up

    return up(str(config_file(args.config)), web=args.web, web_port=args.web_port, workers=args.workers,
              isolation_mode=args.isolation,
              control_plane=args.control_plane, etcd_port=args.etcd_port)


def _gateway(args) -> int:
    from mesh.runtime import supervisor

    workers = args.workers or supervisor.default_workers()
    if args.name:  # read by every worker's config addon (mesh_proxy): a rollout's canary names it
        os.environ["MITMESH_PROXY"] = args.name
    if args.address:  # every worker binds there (mesh/core/state.py gateway_address)
        os.environ["MITMESH_ADDRESS"] = args.address
    if args.identity:  # every process that reads an etcds:// store presents it (store._tls_files)
        from mesh.runtime.store import identity_files

        os.environ.update(identity_files(args.identity))
    return supervisor.serve(str(config_file(args.config)), workers, args.verbosity)


def _function(args) -> int:
    from mesh.config import load
    from mesh.functions import host, spec
    from mesh.runtime import functionforks

    path = config_file(args.config)
    try:
        config = load(path)
    except ConfigError as e:
        raise CommandError(str(e), FAILED) from None
    if args.name not in config.functions:
        known = ", ".join(config.functions) or "none are defined"
        raise CommandError(f"unknown function {args.name!r} in {path} (expected one of: {known})", BAD_INPUT)
    host.serve(spec.compile(args.name, config.functions[args.name], str(path)), args.host, args.port, args.proxy,
               functionforks.starter())
    return 0


def _sidecar(args) -> int:
    import os

    from mesh.runtime import supervisor
    from mesh.core.workload import parse_workload

    checked = config_file(args.config)
    spec = ",".join(f"{k}={v}" for k, v in (
        ("service", args.service), ("version", args.version), ("app", args.app),
        ("address", args.address), ("zone", args.zone), ("region", args.region), ("weight", args.weight),
        ("instance", args.instance), ("inbound", args.inbound_port),
        ("outbound", args.outbound_port), ("admin", args.admin_port),
        ("capture", args.capture)) if v not in (None, ""))
    try:
        parse_workload(spec)
    except ValueError as e:
        raise CommandError(str(e), BAD_INPUT) from None
    if args.workers > 1:
        return supervisor.serve(args.config, args.workers, args.verbosity, "sidecar", spec)
    # one worker: the sidecar is this one process (no supervisor), under -O like every worker; it
    # checks that its addresses are free itself (mesh/proxy/master.py), so the config is read once
    config = checked if isinstance(checked, str) else Path(args.config).resolve()
    argv = supervisor.worker_argv(config, [], "sidecar", args.verbosity, -1, spec)
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 1  # not reached


def _record(args) -> int:
    from tools import replay

    admins = args.admin or replay.admins_of(str(config_file(args.config)))
    token = replay.admin_token(args.config, args.token_file)
    # pods' admin listeners (in up.json of a running `mitmesh up`) are reached through its namespace
    netns = None if args.admin else replay.netns_of(str(config_file(args.config)))
    return replay.record(admins, args.seconds, args.filter, args.output, token, args.include_secrets, netns)


def _replay(args) -> int:
    from tools import replay

    ignore = frozenset(k for k in args.ignore.split(",") if k)
    return replay.replay(args.file, args.against, only=args.only, admin=args.admin,
                         config_path=args.config, ignore=ignore, identity=args.identity)


def _apikey(args) -> int:
    from mesh.policies import apikeys

    key = apikeys.new_key()
    print(f"key for {args.name} (give it to the consumer; it is not stored anywhere):\n  {key}")
    print(f"config (policies.<name>.api_key.consumers):\n  {args.name}: {{key_sha256: {apikeys.digest(key)}}}")
    return 0


def _canary(args) -> int:
    from mesh.core import canary

    wanted = canary.parse_assignments(args.weights)
    changes = canary.set_weights(args.config, args.service, wanted, args.route)
    for c in changes:
        before = " ".join(f"{v}={w}" for v, w in c.before.items())
        after = " ".join(f"{v}={w}" for v, w in c.after.items())
        print(f"{args.config}: route {c.route}: {args.service} {before} -> {after}")
    print("running gateways reload the file within a second")
    return 0


def _traces(args) -> int:
    from tools import traces

    return traces.run(args.port, args.settle, args.count, args.seconds)


def _scenario(args) -> int:
    from tools import scenario

    return scenario.cli(args)


def _docs(args) -> int:
    from .config import reference

    out = Path(args.output)
    if args.check:
        if not out.is_file():
            raise CommandError(f"{out} does not exist: run {reference.COMMAND}", FAILED)
        if out.read_text() != reference.render():
            raise CommandError(f"{out} is stale (the schema changed): run {reference.COMMAND}", FAILED)
        print(f"{out} is up to date")
        return 0
    changed = reference.write(out)
    print(f"{'wrote' if changed else 'unchanged:'} {out}")
    return 0


def _bench(args) -> int:
    from tools import bench

    return bench.main(args.rest)


CONFIG_HELP = "the mesh config file (default mesh.yaml, in the current folder)"
VERBOSITY = ["error", "warn", "info", "debug"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mitmesh", description="API gateway and service mesh on mitmproxy")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check config files; prints ok or every error")
    v.add_argument("files", nargs="+", metavar="FILE", help="config files to check")
    v.set_defaults(func=_validate)

    u = sub.add_parser("up", help="start the demo services and the gateway")
    u.add_argument("--config", default="mesh.yaml", help=CONFIG_HELP)
    u.add_argument("--web", action="store_true", help="run the gateway as mitmweb on 127.0.0.1 (default off)")
    u.add_argument("--web-port", type=port, default=8081, help="mitmweb's port with --web (default 8081)")
    u.add_argument("--workers", type=count, default=0, help="gateway workers (default 0: one per core)")
    u.add_argument("--isolation", choices=["pod", "loopback"], default=None,
                   help="pod: each instance in a network namespace of its own (Linux, root); loopback: on "
                        "loopback addresses (default: sidecar.isolation, auto: pod where possible)")
    u.add_argument("--control-plane", default="file", choices=["file", "etcd"],
                   help="file: every proxy reads --config (default); etcd: a local etcd on 127.0.0.1 "
                        "holds the config (pushed from --config) and the instances")
    u.add_argument("--etcd-port", type=port, default=None,
                   help="the local etcd's client port with --control-plane etcd (default 2379, or a "
                        "free one when taken)")
    _fork_server_flag(u)
    u.set_defaults(func=_up)

    g = sub.add_parser("gateway", help="run the gateway on the lean runtime, one worker per core")
    g.add_argument("--config", default="mesh.yaml", help=CONFIG_HELP)
    g.add_argument("--workers", type=count, default=0, help="worker processes (default 0: one per core)")
    g.add_argument("--verbosity", default="info", choices=VERBOSITY, help="log level (default info)")
    g.add_argument("--name", default="", help="this gateway's name for a config rollout's canary "
                                              "(default: gateway)")
    g.add_argument("--address", default=None, type=address,
                   help="bind every listener and the admin listener on this address instead of the "
                        "config's: one config for gateways on many hosts (default: the config's)")
    g.add_argument("--identity", default=None, type=name, metavar="NAME",
                   help="with --config etcds://...: the workload whose certificate it presents to "
                        "etcd and signs its presence with, read before the config names "
                        "gateway.identity: certs/workload/NAME.pem and .key (default: gateway, or "
                        "$MITMESH_ETCD_CERT and $MITMESH_ETCD_KEY)")
    _fork_server_flag(g)
    g.set_defaults(func=_gateway)

    r = sub.add_parser("record", help="save the mesh's flows for a while (mitmproxy flow format)")
    r.add_argument("--admin", action="append", metavar="URL", type=admin_url,
                   help="admin listener of a proxy to record (repeatable; default: every proxy of the "
                        "`mitmesh up` running --config, else its gateway admin)")
    r.add_argument("--config", default="mesh.yaml", help=CONFIG_HELP + "; read without --admin")
    r.add_argument("--seconds", type=seconds, default=30.0, help="how long to record (default 30)")
    r.add_argument("--filter", default="", help="mitmproxy filter expression, e.g. '~u /items & ~m GET' "
                                                "(default: every flow)")
    r.add_argument("-o", "--output", default="flows.mitm",
                   help="file to write, with mode 0600 (default flows.mitm)")
    r.add_argument("--token-file", default=None,
                   help="admin token file (default: the config's, <mesh.identity.dir>/admin.token)")
    r.add_argument("--include-secrets", action="store_true",
                   help="keep credentials (Authorization, cookies, API keys, tokens) in the "
                        "recording (default: redacted)")
    r.set_defaults(func=_record)

    rp = sub.add_parser("replay", help="replay recorded requests against a cluster; list differing responses")
    rp.add_argument("file", help="a flow file from `mitmesh record` (or mitmproxy's own)")
    rp.add_argument("--against", required=True, metavar="CLUSTER", help="SERVICE/VERSION, e.g. catalog/v2 (required)")
    rp.add_argument("--only", metavar="CLUSTER", help="replay only flows that went to this cluster (default: all)")
    rp.add_argument("--admin", metavar="URL", type=admin_url,
                    help="find the cluster's endpoints through this admin listener (default: the "
                         "static endpoints of --config)")
    rp.add_argument("--config", default=None,
                    help="config for static endpoints and mTLS certificates (default ./mesh.yaml, "
                         "else with --admin the file the running gateway serves)")
    rp.add_argument("--identity", metavar="NAME",
                    help="workload certificate presented to mTLS endpoints (default gateway.identity)")
    rp.add_argument("--ignore", default=",".join(BY_DESIGN),
                    help=f"JSON keys to ignore when comparing, comma-separated (default {','.join(BY_DESIGN)})")
    rp.set_defaults(func=_replay)

    f = sub.add_parser("function", help="serve one function over HTTP on a loopback address, as a mesh "
                                        "service behind a sidecar (`mitmesh sidecar --app HOST:PORT`)")
    f.add_argument("name", help="the function (a key of `functions` in the config)")
    f.add_argument("--config", default="mesh.yaml", help=CONFIG_HELP)
    f.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    f.add_argument("--port", type=port, required=True, help="port to bind (required)")
    f.add_argument("--proxy", default=None, metavar="HOST:PORT",
                   help="the sidecar's outbound listener, the instances' HTTP_PROXY for calls to mesh "
                        "services (default: the function's `outbound`, else none)")
    f.set_defaults(func=_function)

    s = sub.add_parser("sidecar", help="run the sidecar of one service instance (inbound and outbound)")
    s.add_argument("--config", default="mesh.yaml", help=CONFIG_HELP)
    s.add_argument("--service", required=True, help="the service this instance belongs to (required)")
    s.add_argument("--version", default="v1", help="its version (default v1)")
    s.add_argument("--app", required=True, metavar="HOST:PORT", help="where the local app listens (required)")
    s.add_argument("--address", default="127.0.0.1",
                   help="this instance's address: listeners and mDNS bind here (default 127.0.0.1)")
    s.add_argument("--zone", default=None, help="its zone, announced for zone-aware balancing (default none)")
    s.add_argument("--region", default=None, help="its region, the locality above zone (default none)")
    s.add_argument("--weight", type=int, default=None, help="its load balancing weight (default 1)")
    s.add_argument("--instance", default=None, help="instance name (default service-version-address)")
    s.add_argument("--inbound-port", type=port, default=None, help="default: sidecar.inbound.port")
    s.add_argument("--outbound-port", type=port, default=None, help="default: sidecar.outbound.port")
    s.add_argument("--admin-port", type=port, default=None, help="default: sidecar.admin.port")
    s.add_argument("--capture", choices=["proxy", "transparent"], default=None,
                   help="proxy: the app uses the outbound listener as its HTTP proxy (default); transparent: "
                        "in a pod, nftables redirects the app's connections to it (docs/howto/pods.md)")
    s.add_argument("--workers", type=count, default=1, help="worker processes (default 1)")
    s.add_argument("--verbosity", default="info", choices=VERBOSITY, help="log level (default info)")
    _fork_server_flag(s)
    s.set_defaults(func=_sidecar)

    b = sub.add_parser("bench", help="benchmark: direct, bare mitmdump, mitmesh gateway "
                                     "(`mitmesh bench --help` lists its options)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER, help="bench's own options")
    b.set_defaults(func=_bench)

    from mesh.runtime import configcmd
    from tools import certcmd, plugincmd
    certcmd.add_parser(sub)
    plugincmd.add_parser(sub)
    configcmd.add_parser(sub)

    sc = sub.add_parser("scenario", help="run a failure scenario against a mesh of real processes; "
                                         "prints a report and PASS/FAIL against its SLO")
    sc.add_argument("names", nargs="*", metavar="NAME", help="scenario names, or all")
    sc.add_argument("--list", action="store_true", help="list the scenarios (default off)")
    sc.add_argument("--short", action="store_true", help="a few seconds of load, as in CI (default off)")
    sc.add_argument("--keep", action="store_true", help="keep the work directory and logs (default: "
                                                        "kept on FAIL only)")
    sc.add_argument("--isolation", choices=["auto", "pod", "loopback"], default="auto",
                    help="pod: every instance in a network namespace of its own, as `mitmesh up` runs them "
                         "as root; auto: pod where possible (root on Linux), else loopback (default auto)")
    sc.set_defaults(func=_scenario)

    t = sub.add_parser("traces", help="receive traces on 127.0.0.1 (OTLP/HTTP) and print each as a tree "
                                      "of hops with durations and decisions; no collector needed")
    t.add_argument("--port", type=int, default=4318, help="port on 127.0.0.1 (default 4318, OTLP/HTTP's)")
    t.add_argument("--settle", type=float, default=2.0,
                   help="print a trace once no span of it came for this many seconds (default 2)")
    t.add_argument("--count", type=int, default=0, help="stop after printing this many traces (default: no limit)")
    t.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (default: no limit)")
    t.set_defaults(func=_traces)

    k = sub.add_parser("apikey", help="API keys for the api_key policy")
    ksub = k.add_subparsers(dest="apikey_command", required=True)
    kn = ksub.add_parser("new", help="make a random key and print its config entry (SHA-256)")
    kn.add_argument("name", metavar="CONSUMER", help="the consumer the key is for")
    kn.set_defaults(func=_apikey)

    cn = sub.add_parser("canary", help="canary releases: change a service's weights live")
    cnsub = cn.add_subparsers(dest="canary_command", required=True)
    ks = cnsub.add_parser("set", help="set version weights in percent, e.g. `canary set catalog v2=25`; "
                                     "the other versions share the rest")
    ks.add_argument("service", help="the service whose split changes")
    ks.add_argument("weights", nargs="+", metavar="VERSION=PERCENT", help="e.g. v2=25")
    ks.add_argument("--config", default="mesh.yaml", help=CONFIG_HELP + "; edited in place")
    ks.add_argument("--route", default=None, help="only this route (default: every route splitting the service)")
    ks.set_defaults(func=_canary)

    d = sub.add_parser("docs", help="generated documentation")
    dsub = d.add_subparsers(dest="docs_command", required=True)
    dc = dsub.add_parser("config", help="write the config reference (every key of mesh.yaml) from the schema")
    dc.add_argument("-o", "--output", default="docs/reference/config.md",
                    help="where to write it (default docs/reference/config.md, in the current folder)")
    dc.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if the file differs from what the schema gives")
    dc.set_defaults(func=_docs)

    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # bench parses its own options
        from tools import bench

        return bench.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        _no_fork_server(args)
        return args.func(args)
    except CommandError as e:
        print(f"mitmesh {args.command}: {e}", file=sys.stderr)
        return e.code
    except ConfigError as e:  # file:line: key: problem, one line each
        print(e, file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print(f"mitmesh {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a file or folder named on the command line: missing, unreadable, unwritable
        where = f"{e.filename}: " if e.filename else ""
        print(f"mitmesh {args.command}: {where}{e.strerror or e}", file=sys.stderr)
        return BAD_INPUT if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)) else FAILED


if __name__ == "__main__":
    sys.exit(main())
