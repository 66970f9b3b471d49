"""The `functions:` section and a route's `function:` action: exact messages for bad input."""

from __future__ import annotations

import pytest

from mesh.config import ConfigError, load_text
from mesh.core.routing import FunctionAction, compile_routes
from tests.conftest import dedent

TEXT = """
version: 1
gateway:
  listeners: [{name: public, port: 18080}]
functions:
  greet: {handler: "greet:handler", timeout: 2s, idle: 30s, max_instances: 3}
routes:
  - {name: greet, match: {path: {prefix: /greet/}, methods: [GET]}, function: greet}
  - {name: one, match: {path: {exact: /one}}, function: greet}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(dedent(text), "mesh.yaml")
    return [str(p) for p in e.value.problems]


def test_defaults_and_the_compiled_action():
    config = load_text(dedent(TEXT), "mesh.yaml")
    fn = config.functions["greet"]
    assert (fn.timeout, fn.idle, fn.concurrency, fn.min_instances, fn.max_instances, fn.queue) == (2.0, 30.0, 1, 0, 3, 16)
    routes = compile_routes(config).routes
    assert routes[0].action == FunctionAction("greet", routes[0].action.route)
    assert routes[0].action.route.key == "GET /greet/{proxy+}" and routes[0].action.route.prefix == "/greet/"
    assert routes[1].action.route.key == "ANY /one"


@pytest.mark.parametrize("old, new, expected", [
    ('handler: "greet:handler"', 'handler: "greet.handler"',
     "mesh.yaml:5: functions.greet.handler: expected module:function, e.g. services.functions.greet:handler "
     "(got 'greet.handler')"),
    ('handler: "greet:handler"', 'handler: "greet:handler\\n"',
     "mesh.yaml:5: functions.greet.handler: expected module:function, e.g. services.functions.greet:handler "
     "(got 'greet:handler\\n')"),
    ("timeout: 2s", "timeout: 0s", "mesh.yaml:5: functions.greet.timeout: expected a value > 0 (got '0s')"),
    ("max_instances: 3", "max_instances: 3, min_instances: 4",
     "mesh.yaml:5: functions.greet: min_instances: expected at most max_instances (3) (got 4)"),
    ("idle: 30s", "idle: soon", "mesh.yaml:5: functions.greet.idle: expected a duration like 250ms, 2s or 1m (got 'soon')"),
    ("idle: 30s", "idel: 30s", "mesh.yaml:5: functions.greet.idel: unknown key; expected one of handler, code, "
     "timeout, concurrency, min_instances, max_instances, idle, queue, queue_timeout, environment, outbound (got 'idel')"),
    ("idle: 30s", "environment: {1X: y}",
     "mesh.yaml:5: functions.greet.environment: expected environment variable names like LOG_LEVEL (got '1X')"),
    ("function: greet}\n  - {name: one", "function: grete}\n  - {name: one",
     "mesh.yaml:7: routes[0].function: unknown function; expected one of greet (got 'grete')"),
    ("function: greet}\n  - {name: one", "function: greet, direct: {status: 200}}\n  - {name: one",
     "mesh.yaml:7: routes[0]: expected exactly one of forward, direct, redirect, function (got direct, function)"),
    ("routes:", "services:\n  view: {versions: {v1: {launch: {app: function}}}}\nroutes:",
     "mesh.yaml:7: services.view.versions.v1.launch: function: expected together with app: function "
     "(got app function, function None)"),
    ("routes:", "services:\n  view: {versions: {v1: {launch: {app: function, function: nope}}}}\nroutes:",
     "mesh.yaml:7: services.view.versions.v1.launch.function: unknown function; expected one of greet (got 'nope')"),
])
def test_errors_name_line_key_and_value(old, new, expected):
    assert old in TEXT
    assert expected in errors(TEXT.replace(old, new, 1))
