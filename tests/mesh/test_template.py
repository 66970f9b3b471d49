"""Templates: parsed once, rendered from request values; missing values skip, defaults fill in."""

from __future__ import annotations

import pytest

from mesh.config import template
from mesh.config.template import MISSING


def render(text: str, **values):
    t = template.parse(text)
    return t.render({tuple(k.split("__", 1)): v for k, v in values.items()})


def test_literal_and_references():
    assert render("plain") == "plain"
    assert render("Bearer $(claims.sub)", claims__sub="alice") == "Bearer alice"
    assert render("$(headers.X-User)", **{"headers__x-user": "bob"}) == "bob"  # header names are blind to case
    assert render("/u/$(path.id)/$(path.1)", path__id="7", path__1="7") == "/u/7/7"


def test_single_reference_keeps_the_value_type():
    assert render("$(claims.roles)", claims__roles=["a", "b"]) == ["a", "b"]
    assert render("roles=$(claims.roles)", claims__roles=["a", "b"]) == "roles=a,b"
    assert render("n=$(claims.n) ok=$(claims.ok)", claims__n=3, claims__ok=True) == "n=3 ok=true"


def test_missing_values_and_defaults():
    assert render("$(claims.sub)") is MISSING
    assert render("user $(claims.sub)") is MISSING
    assert render("$(claims.sub|anonymous)") == "anonymous"
    assert render("tier=$(headers.x-tier|basic)") == "tier=basic"
    assert render("$(claims.sub|)") == ""


def test_escaped_dollar_is_literal():
    assert render("cost $$(not a ref)") == "cost $(not a ref)"


@pytest.mark.parametrize("text, error", [
    ("$(cookie.a)", "invalid template: unknown source 'cookie'; expected $(headers.NAME), $(query.NAME), "
                    "$(path.NAME) or $(claims.NAME) (got '$(cookie.a)')"),
    ("x $(claims.sub", "invalid template: '$(' is not closed (got 'x $(claims.sub')"),
    ("$(claims)", "invalid template: $(claims.NAME) needs a name (got '$(claims)')"),
    ("$(headers.)", "invalid template: $(headers.NAME) needs a name (got '$(headers.)')"),
])
def test_invalid_templates(text, error):
    with pytest.raises(ValueError) as e:
        template.parse(text)
    assert str(e.value) == error


def test_json_values_with_templates_inside():
    value = template.compile_value({"who": "$(claims.sub)", "tags": ["x", "$(query.t)"], "n": 1})
    refs = {r.key for r in template.value_refs(value)}
    assert refs == {("claims", "sub"), ("query", "t")}
    assert template.render_value(value, {("claims", "sub"): "al", ("query", "t"): "q"}) == \
        {"who": "al", "tags": ["x", "q"], "n": 1}
    assert template.render_value(value, {("claims", "sub"): "al"}) is MISSING
