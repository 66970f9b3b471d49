"""The docs against the schema: the generated config reference is current, every YAML example validates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mesh.cli import main
from mesh.config import reference
from mesh.config.schema import MeshConfig

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_config_reference_is_current():
    path = ROOT / reference.OUTPUT
    assert path.is_file(), f"{reference.OUTPUT} does not exist: run {reference.COMMAND}"
    assert path.read_text() == reference.render(), (
        f"{reference.OUTPUT} is stale (the schema changed): run {reference.COMMAND} and commit it")


@pytest.mark.parametrize("key, kind, default, allowed", [
    ("policies.<name>.retries.retry_on", "list of strings", "`[connect-failure, reset, reset-before-request]`",
     "at least 1 item; one of `5xx`, `gateway-error`, `reset`, `reset-before-request`, `connect-failure`, "
     "`retriable-status-codes`"),
    ("mesh.identity.lifetime", "duration", "`24h`", "10s to 8760h"),
    ("gateway.listeners[].port", "integer", "required", "1 to 65535"),
    ("gateway.admin.port", "integer", "`9901`", "1 to 65535"),
    ("policies.<name>.rate_limit.storage", "storage", "`memory`",
     "memory, or redis://host:port/db (rediss://, async+redis://)"),
    ("policies.<name>.size_limit.max_body", "size", "`8MiB`", "≤ 16GiB"),
    ("sidecar.inbound", "mapping ([sidecar.inbound](#sidecar-inbound))", "`{name: inbound, port: 15006}`", ""),
    ("services.<name>.lb.policy", "string", "`round_robin`",
     "one of `round_robin`, `least_request`, `random`, `consistent_hash`, `peak_ewma`"),
])
def test_reference_rows(key, kind, default, allowed):
    rows = {row[0]: row for s in reference.sections() for row in s.rows}
    assert rows[f"`{key}`"][1:4] == (kind, default, allowed)


def _paths(model, prefix=""):
    """Every key path of the schema, walked independently of the generator."""
    import typing

    out = []
    model.model_rebuild()
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        out.append(key)
        tp = info.annotation
        for _ in range(4):  # peel Optional, list, dict, Annotated down to a model
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            origin = typing.get_origin(tp)
            if origin is list:
                tp, key = args[0], key + "[]"
            elif origin is dict:
                tp, key = args[1], key + ".<key>"
            elif origin is typing.Annotated or (args and len(args) == 1):
                tp = args[0]
        if isinstance(tp, type) and hasattr(tp, "model_fields"):
            out.extend(_paths(tp, key))
    return out


def test_reference_resolves_every_type():
    text = reference.render()
    assert "ForwardRef" not in text  # a field typed by a model defined later in schema.py
    assert "`services.<name>.fault.abort.status`" in text and "`gateway.auth_failures.minute`" in text


def test_reference_has_every_key_in_tree_order():
    sections = reference.sections()
    listed = [row[0].strip("`").replace("<name>", "<key>") for s in sections for row in s.rows]
    paths = _paths(MeshConfig)
    assert len(listed) == len(set(listed)) > 300
    assert sorted(listed) == sorted(paths)
    # one section per mapping, depth first; keys in each in the order the schema declares them
    position = {p: i for i, p in enumerate(paths)}
    heads = [s.path.replace("<name>", "<key>") for s in sections[1:]]
    assert heads == sorted(heads, key=lambda h: position[h.removesuffix("[]").removesuffix(".<key>")])
    for s in sections:
        keys = [position[row[0].strip("`").replace("<name>", "<key>")] for row in s.rows]
        assert keys == sorted(keys), s.path


def test_docs_config_command_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "config.md"
    assert main(["docs", "config", "--output", str(out)]) == 0
    assert out.read_text() == reference.render()
    assert main(["docs", "config", "--output", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("SPIFFE trust domain", "the trust domain"))
    assert main(["docs", "config", "--output", str(out), "--check"]) == 1
    assert f"{out} is stale (the schema changed): run `mitmesh docs config` (or `just docs`)" in capsys.readouterr().err
    assert main(["docs", "config", "--output", str(tmp_path / "none.md"), "--check"]) == 1
    assert "none.md does not exist: run `mitmesh docs config`" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# YAML examples


def _examples():
    for path in DOCS:
        for line, text in reference.yaml_blocks(path.read_text()):
            yield pytest.param(path, line, text, id=f"{path.relative_to(ROOT)}:{line}")


def test_docs_have_yaml_examples():
    assert sum(1 for _ in _examples()) >= 15


@pytest.mark.parametrize("path, line, text", list(_examples()))
def test_docs_yaml_example_validates(path, line, text):
    problems = reference.check_example(text, str(path.relative_to(ROOT)), line)
    assert not problems, "a YAML example of the docs does not match the schema:\n" + "\n".join(map(str, problems))


OPTION = re.compile(r"--set (mesh_\w+)='([^']*)'")
BLOCK_AT = ("policies.<name>.{}", "observability.{}", "gateway.{}")


def _options():
    """`--set mesh_rate_limit='{minute: 60}'` in the docs: a block of mesh.yaml in YAML flow style."""
    for path in DOCS:
        for n, line in enumerate(path.read_text().split("\n"), 1):
            for option, value in OPTION.findall(line):
                key = option.removeprefix("mesh_")
                where = next((p.format(key) for p in BLOCK_AT if reference.model_at(p.format(key))), None)
                if where is not None:  # mesh_config, mesh_workload, ... are not blocks
                    yield pytest.param(path, n, where, value, id=f"{path.relative_to(ROOT)}:{n}:{option}")


def test_docs_have_mitmdump_options():
    assert sum(1 for _ in _options()) >= 10


@pytest.mark.parametrize("path, line, where, value", list(_options()))
def test_docs_mitmdump_option_validates(path, line, where, value):
    text = f"# schema: {where}\n{value}\n"
    problems = reference.check_example(text, str(path.relative_to(ROOT)), line - 1)
    assert not problems, "a mitmdump option in the docs does not match the schema:\n" + "\n".join(map(str, problems))


RESILIENT = """\
policies:
  resilient:
    retries:
      attempts: 3
      retry_on: [5xx, reset]
      retriable_status_codes: [409]
"""


@pytest.mark.parametrize("text, problems", [
    (RESILIENT, ["README.md:44: policies.resilient.retries: retriable_status_codes needs "
                 "retriable-status-codes in retry_on"]),
    # a fragment may leave out required keys (versions, listeners) ...
    ("services:\n  catalog:\n    circuit_breaker: {fail_max: 5}\n", []),
    ("gateway:\n  zone: a\n", []),
    # ... but not misspell one, or give a wrong value
    ("services:\n  catalog:\n    circuit_breaker: {fail_maxx: 5}\n",
     ["README.md:44: services.catalog.circuit_breaker.fail_maxx: unknown key; expected one of fail_max, "
      "reset_timeout, success_threshold, shared, shared_poll (got 'fail_maxx')"]),
    ("policies:\n  p:\n    rate_limit: {minute: 0}\n",
     ["README.md:44: policies.p.rate_limit.minute: expected a value >= 1 (got 0)"]),
    ("services:\n  catalog:\n    fault: {...}\n",
     ["README.md:44: services.catalog.fault....: unknown key; expected one of delay, abort, drip, "
      "reset_after, header_triggered (got '...')"]),
    # a block marked with the sub-model it documents
    ("# schema: policies.<name>.rate_limit\nminute: 60\nkey: ip\n", []),
    ("# schema: policies.<name>.mirror\npercent: 10\n",  # a marked block is whole: required keys count
     ["README.md:42: service: required key is missing"]),
    ("# schema: policies.<name>.rate_limit\nminute: 60\nkey: nobody\n",
     ["README.md:44: key: expected one of 'consumer', 'ip', 'header', 'claim', 'api_key' (got 'nobody')"]),
    ("# schema: policies.<name>.nothing\nminute: 60\n",
     ["README.md:42: schema: no mapping at key path 'policies.<name>.nothing'"]),
    # not mesh.yaml at all
    ("# schema: none\nscrape_configs: []\n", []),
    # a whole config: also the references between sections
    ("version: 1\ngateway: {listeners: [{name: public, port: 8080}]}\n"
     "routes: [{name: r, forward: {service: nope}}]\n",
     ["README.md:44: routes[0].forward.service: unknown service; no services are defined (got 'nope')"]),
    ("version: 1\nrouting: {}\n",
     ["README.md:43: routing: unknown key; expected one of version, mesh, gateway, discovery, sidecar, services, "
      "routes, policies, functions, plugins, observability (got 'routing')", "README.md:42: gateway: required key is missing"]),
    ("policies:\n  p: {timeout: {request: [", None),  # a YAML syntax error is one problem with its line
])
def test_check_example(text, problems):
    found = [str(p) for p in reference.check_example(text, "README.md", 42)]
    if problems is None:
        assert len(found) == 1 and found[0].startswith("README.md:") and "invalid YAML" in found[0]
    else:
        assert sorted(found) == sorted(problems)


def test_yaml_blocks_found_with_their_lines():
    text = "intro\n\n```yaml\na: 1\nb: 2\n```\n\n- item\n\n  ```yaml\n  c: 3\n  ```\n```sh\nx\n```\n"
    assert reference.yaml_blocks(text) == [(4, "a: 1\nb: 2\n"), (11, "c: 3\n")]
