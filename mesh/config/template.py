"""Value templates such as `Bearer $(claims.sub)`: parsed once at load, rendered from request values.

A template reads `$(SOURCE.NAME)` or `$(SOURCE.NAME|default)`, SOURCE one of headers, query, path
(captures of the route's path regex) or claims (verified JWT claims; a dotted NAME walks nested
claims). `$$(` writes a literal `$(`. A template that is one reference and nothing else keeps the
value's type (a list claim stays a list in a JSON body); otherwise values are joined as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

SOURCES = ("headers", "query", "path", "claims")


class Missing:
    """The value a reference renders to when the request has no such value and there is no default."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = Missing()


@dataclass(frozen=True, slots=True)
class Ref:
    source: str
    name: str  # header names are lower case
    default: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.name)


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    parts: tuple[str | Ref, ...]

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    def render(self, values: Mapping[tuple[str, str], Any]) -> Any:
        """The rendered value, or MISSING when a reference without default has no value."""
        parts = self.parts
        if len(parts) == 1 and isinstance(parts[0], Ref):
            return _lookup(parts[0], values)
        out = []
        for p in parts:
            if isinstance(p, str):
                out.append(p)
                continue
            v = _lookup(p, values)
            if v is MISSING:
                return MISSING
            out.append(as_text(v))
        return "".join(out)


def _lookup(ref: Ref, values: Mapping[tuple[str, str], Any]) -> Any:
    v = values.get(ref.key)
    if v is None:
        return MISSING if ref.default is None else ref.default
    return v


def as_text(value: Any) -> str:
    """How a value is written into a header, query parameter or path."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(as_text(v) for v in value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def parse(text: str) -> Template:
    """Parse a template; raises ValueError naming what is wrong."""
    parts: list[str | Ref] = []
    literal: list[str] = []
    i = 0
    while True:
        j = text.find("$(", i)
        if j < 0:
            literal.append(text[i:])
            break
        if j > 0 and text[j - 1] == "$":  # `$$(` is a literal `$(`
            literal.append(text[i:j - 1] + "$(")
            i = j + 2
            continue
        literal.append(text[i:j])
        end = text.find(")", j)
        if end < 0:
            raise ValueError(f"invalid template: '$(' is not closed (got {text!r})")
        ref = _parse_ref(text[j + 2:end], text)
        if "".join(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(ref)
        i = end + 1
    if "".join(literal) or not parts:
        parts.append("".join(literal))
    return Template(text, tuple(parts))


def _parse_ref(inner: str, text: str) -> Ref:
    body, bar, default = inner.partition("|")
    source, dot, name = body.strip().partition(".")
    if source not in SOURCES:
        raise ValueError(f"invalid template: unknown source {source!r}; expected "
                         f"$(headers.NAME), $(query.NAME), $(path.NAME) or $(claims.NAME) (got {text!r})")
    name = name.strip()
    if not dot or not name or "(" in name:
        raise ValueError(f"invalid template: $({source}.NAME) needs a name (got {text!r})")
    if source == "headers":
        name = name.lower()
    return Ref(source, name, default if bar else None)


def compile_value(value: Any) -> Any:
    """A JSON value whose strings (at any depth) are templates; non-template strings stay strings."""
    if isinstance(value, str):
        t = parse(value)
        return t if t.refs else t.parts[0] if t.parts else ""
    if isinstance(value, list):
        return [compile_value(v) for v in value]
    if isinstance(value, dict):
        return {k: compile_value(v) for k, v in value.items()}
    return value


def render_value(value: Any, values: Mapping[tuple[str, str], Any]) -> Any:
    """Render a compiled JSON value; MISSING if any template inside it is missing."""
    if isinstance(value, Template):
        return value.render(values)
    if isinstance(value, list):
        out = [render_value(v, values) for v in value]
        return MISSING if any(v is MISSING for v in out) else out
    if isinstance(value, dict):
        items = {k: render_value(v, values) for k, v in value.items()}
        return MISSING if any(v is MISSING for v in items.values()) else items
    return value


def value_refs(value: Any) -> set[Ref]:
    if isinstance(value, Template):
        return set(value.refs)
    if isinstance(value, list):
        return set().union(*(value_refs(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(value_refs(v) for v in value.values())) if value else set()
    return set()


def check(value: str) -> str:
    """Pydantic validator: the text must parse as a template."""
    parse(value)
    return value


def check_value(value: Any) -> Any:
    """Pydantic validator for JSON values with template strings inside."""
    compile_value(value)
    return value
