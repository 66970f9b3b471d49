"""`plugins:` in mesh.yaml: positions, references and options, each error with file, line and key."""

from __future__ import annotations

import pytest

from mesh.cli import main
from mesh.config import ConfigError
from mesh.core.build import build
from mesh.runtime.plugins import load

CODE = '''
from pydantic import BaseModel

class Options(BaseModel):
    limit: int
    names: list[str] = []

class Counted:
    Options = Options

    def __init__(self, options):
        self.limit = options.limit

class Plain:
    pass
'''

BASE = """version: 1
gateway:
  listeners: [{{name: public, port: 18080}}]
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:9"]}}}}, plugins: [{service_refs}]}}
routes:
  - {{name: users, match: {{path: {{prefix: /}}}}, forward: {{service: users}}, plugins: [{route_refs}]}}
plugins:
  p:
{block}
"""


def write(tmp_path, block: str, route_refs: str = "p", service_refs: str = "") -> str:
    (tmp_path / "code.py").write_text(CODE)
    path = tmp_path / "mesh.yaml"
    path.write_text(BASE.format(block=block, route_refs=route_refs, service_refs=service_refs))
    return str(path)


@pytest.mark.parametrize("block, refs, error", [
    ("    plugin: code.py:Counted\n    after: warp", "p",
     "mesh.yaml:11: plugins.p.after: unknown stage of the gateway chain; expected one of hopbyhop, "
     "requestid, normalize, tracing, sanitize, tls, ipfilter, router, cors,"),
    ("    plugin: code.py:Counted\n    after: normalize", "p",
     "mesh.yaml:11: plugins.p.after: runs before router picks the route, so it can only apply to every "
     "route: add all_routes: true or place it after router (got after: normalize)"),
    ("    plugin: code.py:Counted\n    after: authn\n    before: forward", "p",
     "mesh.yaml:9: plugins.p: expected exactly one of after, before (got after, before)"),
    ("    plugin: code.py:Counted\n    after: authn\n    budget: 0", "p",
     "mesh.yaml:12: plugins.p.budget: expected a value > 0 (got 0)"),
    ("    plugin: code.py:Counted\n    after: authn", "nope",
     "mesh.yaml:7: routes[0].plugins[0]: unknown plugin; expected one of p (got 'nope')"),
    ("    plugin: code.py:Counted\n    chain: sidecar_inbound\n    after: inbound", "p",
     "mesh.yaml:7: routes[0].plugins[0]: plugin p runs in the sidecar_inbound chain: list it in "
     "services.NAME.plugins (got 'p')"),
])
def test_config_errors(tmp_path, block, refs, error):
    with pytest.raises(ConfigError) as e:
        build(write(tmp_path, block, refs))
    assert str(e.value).split("\n")[0].startswith(error.replace("mesh.yaml", str(tmp_path / "mesh.yaml")))


def test_a_gateway_plugin_listed_by_a_service_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"mesh.yaml:5: services.users.plugins\[0\]: plugin p runs in "
                                          r"the gateway chain: list it in routes\[\].plugins"):
        build(write(tmp_path, "    plugin: code.py:Counted\n    after: authn", "", "p"))


@pytest.mark.parametrize("block, error", [
    ("    plugin: code.py:Counted\n    after: authn\n    options: {limit: many, names: 3}",
     ["mesh.yaml:12: plugins.p.options.limit: expected an integer (got 'many')",
      "mesh.yaml:12: plugins.p.options.names: expected a list (got 3)"]),
    ("    plugin: code.py:Counted\n    after: authn\n    options:\n      limit: 1\n      colour: red",
     ["mesh.yaml:14: plugins.p.options.colour: unknown key; expected one of limit, names (got 'colour')"]),
    ("    plugin: code.py:Counted\n    after: authn",
     ["mesh.yaml:9: plugins.p.options.limit: required key is missing"]),
    ("    plugin: code.py:Plain\n    after: authn\n    options: {limit: 1}",
     ["mesh.yaml:12: plugins.p.options: Plain takes no options (it has no Options model) (got {'limit': 1})"]),
    ("    plugin: code.py:Missing\n    after: authn",
     ["mesh.yaml:10: plugins.p.plugin: no class Missing in"]),
    ("    plugin: nowhere.py\n    after: authn",
     ["mesh.yaml:10: plugins.p.plugin: no such file: " ]),
    ("    plugin: no_such_module_anywhere:Thing\n    after: authn",
     ["mesh.yaml:10: plugins.p.plugin: no such module: no_such_module_anywhere (got 'no_such_module_anywhere:Thing')"]),
])
def test_load_errors(tmp_path, block, error):
    snap = build(write(tmp_path, block))
    with pytest.raises(ConfigError) as e:
        load(snap.plugins.plugins[0])
    lines = str(e.value).replace(str(tmp_path / "mesh.yaml"), "mesh.yaml").split("\n")
    assert len(lines) == len(error)
    for line, expected in zip(lines, error):
        assert line.startswith(expected), line


def test_an_import_error_names_the_plugins_file_and_line(tmp_path):
    snap = build(write(tmp_path, "    plugin: code.py:Counted\n    after: authn"))
    (tmp_path / "code.py").write_text(CODE + "\nraise ImportError('no backend')\n")
    with pytest.raises(ConfigError) as e:
        load(snap.plugins.plugins[0])
    line = len((CODE + "\nraise ImportError('no backend')\n").splitlines())
    assert f"plugins.p.plugin: import failed: {tmp_path}/code.py:{line}: ImportError: no backend" in str(e.value)


def test_validate_loads_the_plugins(tmp_path, capsys):
    path = write(tmp_path, "    plugin: code.py:Counted\n    after: authn\n    options: {limit: x}")
    assert main(["validate", path]) == 1
    assert f"{path}:12: plugins.p.options.limit: expected an integer (got 'x')" in capsys.readouterr().out
    path = write(tmp_path, "    plugin: code.py:Counted\n    after: authn\n    options: {limit: 3}")
    assert main(["validate", path]) == 0
