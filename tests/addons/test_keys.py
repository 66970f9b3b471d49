"""FlowState is a contract: every field has exactly the writers keys.WRITERS names beside it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from mitmproxy.test import tflow

from addons import keys

ADDONS = Path(__file__).resolve().parents[2] / "addons"


def writes() -> dict[str, set[str]]:
    """FlowState field → the addon modules that assign it (`st.<field> = …`, also in tuples and `+=`)."""
    found: dict[str, set[str]] = {}
    for path in sorted(ADDONS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            else:
                continue
            for target in targets:
                for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "st":
                        found.setdefault(t.attr, set()).add(path.stem)
    return found


def test_every_flow_state_field_is_written_only_by_the_stage_named_for_it():
    for field, modules in writes().items():
        assert field in keys.WRITERS, f"st.{field} is written by {sorted(modules)} but is no FlowState field"
        assert modules <= set(keys.WRITERS[field]), \
            f"st.{field} is written by {sorted(modules)}; keys.WRITERS names {keys.WRITERS[field]}"


def test_the_cluster_and_the_upstream_path_are_decided_once():
    assert keys.WRITERS["cluster"] == ("forward",)
    assert "upstream_path" not in keys.WRITERS  # derived: the normalized path, minus the API version
    assert set(keys.FlowState.__slots__) == set(keys.WRITERS)


@pytest.mark.parametrize("live, answered, failed, begun, route, unanswered, routed", [
    (True, False, False, True, True, True, True),
    (True, False, False, True, False, True, False),  # not routed (yet): only before routing
    (True, False, False, False, False, False, False),  # not ours: no FlowState
    (True, True, False, True, True, False, False),  # a stage answered it
    (True, False, True, True, True, False, False),  # the connection failed
    (False, False, False, True, True, False, False),  # a replayed or loaded flow
])
def test_a_request_hook_acts_only_on_a_live_unanswered_flow_of_ours(live, answered, failed, begun, route,
                                                                     unanswered, routed):
    flow = tflow.tflow(resp=answered, err=failed, live=live)
    st = keys.begin(flow, None, None) if begun else None
    if begun and route:
        st.route = object()
    assert keys.unanswered(flow) is (st if unanswered else None)
    assert keys.routed(flow) is (st if routed else None)
