"""The command line: every option's help names its default; bad input gets one line and exit code 2,
a failed operation exit code 1, never a traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mitmproxy import io
from mitmproxy.test import tflow

from tools import bench
from mesh import cli
from mesh.runtime import procs
from tests.conftest import dedent

ROOT = Path(__file__).resolve().parents[2]


def _options(parser: argparse.ArgumentParser, name: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _options(sub, f"{name} {sub_name}")
        elif not isinstance(action, argparse._HelpAction):
            yield name, action


def _bench_parser() -> argparse.ArgumentParser:
    """bench parses its own options: catch the parser it builds instead of running a benchmark."""
    built = []

    class Caught(Exception):
        pass

    def parse(self, *args, **kwargs):
        built.append(self)
        raise Caught

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = parse
    try:
        bench.main([])
    except Caught:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return built[0]


def test_every_option_has_help_and_each_taking_a_value_names_its_default():
    missing = []
    for command, action in [*_options(cli.parser(), "mitmesh"), *_options(_bench_parser(), "mitmesh bench")]:
        label = f"{command} {'/'.join(action.option_strings) or action.dest}"
        if not action.help:
            missing.append(f"{label}: no help")
        elif action.option_strings and action.nargs != 0 and not action.required and "default" not in action.help:
            missing.append(f"{label}: help does not name the default ({action.help!r})")
    assert missing == []


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An empty folder (no mesh.yaml) with a few bad inputs, and the demo config beside them."""
    d = tmp_path_factory.mktemp("cli")
    (d / "notaflow.txt").write_text("not a flow\n")
    (d / "bad.yaml").write_text("version: [\n")
    (d / "demo.yaml").write_bytes((ROOT / "mesh.yaml").read_bytes())
    with open(d / FLOWS, "wb") as f:  # one recorded exchange, as `mitmesh record` writes them
        io.FlowWriter(f).add(tflow.tflow(resp=True))
    return d


def mitmesh(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], cwd=folder, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


CLOSED = f"http://127.0.0.1:{procs.free_port()}"  # nothing listens there
FLOWS = "flows.mitm"

CASES = [
    # (arguments, exit code, the one line printed)
    ("canary set catalog v2=10", 2, "mitmesh canary: cannot read mesh.yaml: No such file or directory "
                                    "(name the config with --config FILE)"),
    ("canary set catalog v2=abc --config demo.yaml", 2, "mitmesh canary: expected VERSION=PERCENT such as "
                                                        "v2=25 (got 'v2=abc')"),
    ("canary set nosuch v2=10 --config demo.yaml", 2, "mitmesh canary: unknown service; expected one of"),
    ("canary set catalog v2=10 --config bad.yaml", 1, "mitmesh canary: bad.yaml:2: invalid YAML:"),
    ("replay missing.mitm --against catalog/v2", 2, "mitmesh replay: missing.mitm: no such file"),
    ("replay notaflow.txt --against catalog/v2", 2, "mitmesh replay: notaflow.txt: not a mitmproxy flow file"),
    (f"replay {FLOWS} --against catalog", 2, "mitmesh replay: expected a cluster as SERVICE/VERSION"),
    (f"replay {FLOWS} --against catalog/v2", 2, "mitmesh replay: no ./mesh.yaml here"),
    (f"replay {FLOWS} --against catalog/v2 --admin {CLOSED}", 1,
     f"mitmesh replay: cannot reach the admin listener {CLOSED}: [Errno 111] Connection refused"),
    (f"replay {FLOWS} --against catalog/v2 --admin not-a-url", 2,
     "mitmesh replay: error: argument --admin: expected a URL such as http://127.0.0.1:9901 (got 'not-a-url')"),
    (f"replay {FLOWS} --against catalog/v9 --config demo.yaml", 2, "mitmesh replay: demo.yaml has no cluster catalog/v9"),
    (f"record --admin {CLOSED} --seconds 1", 1, f"mitmesh record: cannot reach the admin listener {CLOSED}"),
    ("record --seconds 1", 2, "mitmesh record: config mesh.yaml does not exist here"),
    ("record --seconds -1", 2, "mitmesh record: error: argument --seconds: expected a number of seconds > 0"),
    (f"record --admin {CLOSED} -o missing-folder/x.mitm", 2, "mitmesh record: cannot write missing-folder/x.mitm"),
    ("up", 2, "mitmesh up: config mesh.yaml does not exist here"),
    ("up --config demo.yaml --web-port 99999", 2, "mitmesh up: error: argument --web-port: expected a port"),
    ("gateway --config missing.yaml", 2, "mitmesh gateway: config missing.yaml does not exist"),
    ("gateway --workers -1", 2, "mitmesh gateway: error: argument --workers: expected a whole number >= 0"),
    ("sidecar --service users --app 127.0.0.1:1", 2, "mitmesh sidecar: config mesh.yaml does not exist here"),
    ("sidecar --service users --app nonsense --config demo.yaml", 2,
     "mitmesh sidecar: workload: app: expected host:port such as 127.0.0.1:9101 (got 'nonsense')"),
    ("function greet --port 1", 2, "mitmesh function: config mesh.yaml does not exist here"),
    ("function nope --port 1 --config demo.yaml", 2,
     "mitmesh function: unknown function 'nope' in demo.yaml (expected one of: greet, catalog-view)"),
    ("validate missing.yaml", 2, "missing.yaml: no such file"),
    ("validate bad.yaml", 1, "bad.yaml:2: invalid YAML:"),
    ("certs show --config missing.yaml", 2, "mitmesh certs: config missing.yaml does not exist"),
    ("certs issue x --lifetime bogus", 2, "mitmesh certs: --lifetime: expected a duration"),
    ("config history --store etcd://127.0.0.1:1/m --cert x.pem", 2,
     "mitmesh config: --cert: the store etcd://127.0.0.1:1/m is plain http; name it etcds://... "
     "for mutual TLS"),
    ("config history --store etcds://127.0.0.1:1/m --cacert demo.yaml", 2,
     "mitmesh config: --cert: no such file (got 'certs/operator.pem'); `mitmesh up "
     "--control-plane etcd` issues the demo's operator certificate into certs/"),
    ("config rollback 1 --store etcds://127.0.0.1:1/m --cacert demo.yaml --cert nope.pem", 2,
     "mitmesh config: --cert: no such file (got 'nope.pem')"),
    ("scenario nosuch", 2, "mitmesh scenario: unknown scenario 'nosuch'"),
    ("bench --seconds abc", 2, "mitmesh bench: error: argument --seconds: invalid float value: 'abc'"),
]


# (ids without the free port, so that pytest-xdist workers collect the same tests)
@pytest.mark.parametrize("args, code, line", CASES, ids=[c[0].replace(CLOSED, "CLOSED") for c in CASES])
def test_bad_input_gets_one_line_and_an_exit_code(folder, monkeypatch, capsys, args, code, line):
    """In-process, so an exception the CLI lets through fails the test as the traceback it would be."""
    monkeypatch.chdir(folder)
    try:
        returned = cli.main(args.split())
    except SystemExit as e:  # argparse's usage errors
        returned = e.code
    out = capsys.readouterr()
    said = [l for l in (out.out + out.err).splitlines() if l and not l.startswith(("usage:", " "))]
    assert (returned, said[0][:len(line)]) == (code, line), out.err


def test_canary_set_changes_only_the_weights_and_says_so(folder):
    before = (ROOT / "mesh.yaml").read_bytes()
    (folder / "rollout.yaml").write_bytes(before)
    out = mitmesh(folder, ["canary", "set", "catalog", "v2=25", "--config", "rollout.yaml"])
    assert out.returncode == 0, out.stderr
    assert "rollout.yaml: route catalog: catalog v1=90 v2=10 -> v1=75 v2=25" in out.stdout
    assert (folder / "rollout.yaml").read_bytes() == before.replace(b"{v1: 90, v2: 10}", b"{v1: 75, v2: 25}")


def test_validate_imports_every_function_handler(tmp_path, capsys):
    (tmp_path / "fns").mkdir()
    (tmp_path / "fns" / "good.py").write_text("def handler(event, context):\n    return 1\nvalue = 3\n")
    (tmp_path / "mesh.yaml").write_text(dedent("""
        version: 1
        gateway:
          listeners: [{name: public, port: 18080}]
        functions:
          good: {handler: "good:handler", code: fns}
          nomodule: {handler: "nothere:handler", code: fns}
          noattr: {handler: "good:other", code: fns}
          notcallable: {handler: "good:value", code: fns}
        """))
    assert cli.main(["validate", str(tmp_path / "mesh.yaml")]) == 1
    lines = capsys.readouterr().out.splitlines()
    f = tmp_path / "mesh.yaml"
    assert lines == [
        f"{f}:6: functions.nomodule.handler: cannot load the handler: ModuleNotFoundError: No module named "
        "'nothere' (got 'nothere:handler')",
        f"{f}:7: functions.noattr.handler: cannot load the handler: AttributeError: module good has no attribute "
        "other (got 'good:other')",
        f"{f}:8: functions.notcallable.handler: cannot load the handler: TypeError: good:value is not callable "
        "(got 'good:value')",
    ]
