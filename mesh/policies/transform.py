"""Request and response transformation with Kong request-transformer semantics, compiled at load.

Operations run in Kong's order, remove → rename → replace → set → add → append (`set` is ours: add
or replace), on headers, query parameters and top-level or dotted JSON body fields. Values are
templates (mesh/config/template.py) rendered from the request as it arrived, so an operation never sees
the effect of another. Multi-valued maps (headers, query) are anything with get_all, set_all, add,
`in` and `del` (mitmproxy's Headers and MultiDict).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from mesh.config import template
from mesh.config import schema
from mesh.config.template import MISSING, Template
from mesh.config.types import load_json

Values = Mapping[tuple[str, str], Any]
_JSON = re.compile(r"^application/(?:[\w.+-]+\+)?json\s*(?:;|$)", re.I)


@dataclass(frozen=True, slots=True)
class Ops:
    """The operations on one kind of target (headers, query or body), in Kong's order."""

    remove: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    replace: tuple[tuple[str, Any], ...] = ()
    set: tuple[tuple[str, Any], ...] = ()
    add: tuple[tuple[str, Any], ...] = ()
    append: tuple[tuple[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.replace or self.set or self.add or self.append)

    def refs(self) -> set[template.Ref]:
        out: set[template.Ref] = set()
        for pairs in (self.replace, self.set, self.add, self.append):
            for _, value in pairs:
                out |= template.value_refs(value)
        return out


@dataclass(frozen=True, slots=True)
class PathOp:
    strip_prefix: str | None = None
    regex: re.Pattern | None = None
    substitution: str = ""
    set: Template | None = None

    def apply(self, path: str, values: Values) -> str:
        if self.strip_prefix is not None:
            if path.startswith(self.strip_prefix):
                path = path[len(self.strip_prefix):]
                return path if path.startswith("/") else "/" + path
            return path
        if self.regex is not None:
            return self.regex.sub(self.substitution, path, count=1) or "/"
        assert self.set is not None
        rendered = self.set.render(values)
        return path if rendered is MISSING else template.as_text(rendered) or "/"


@dataclass(frozen=True, slots=True)
class Side:
    """The compiled transform of one side (request or response)."""

    headers: Ops
    query: Ops
    body: Ops
    path: PathOp | None
    refs: tuple[template.Ref, ...]  # every value the templates read, resolved once per flow
    max_body: int


@dataclass(frozen=True, slots=True)
class Transform:
    request: Side | None
    response: Side | None
    path_regex: re.Pattern | None  # the route's path regex: its groups are $(path.NAME)
    refs: tuple[template.Ref, ...] = ()  # what the templates of both sides read


def _ops(model: schema.ResponseTransform, target: str, key=lambda k: k) -> Ops:
    def names(block):
        return tuple(key(n) for n in getattr(block, target, ()))

    def pairs(block):
        items = getattr(block, target, {})
        return tuple((key(k), template.compile_value(v)) for k, v in items.items())

    renames = getattr(model.rename, target, {})
    return Ops(remove=names(model.remove), rename=tuple((key(a), key(b)) for a, b in renames.items()),
               replace=pairs(model.replace), set=pairs(model.set), add=pairs(model.add),
               append=pairs(model.append))


def _side(model: schema.ResponseTransform | None, max_body: int) -> Side | None:
    if model is None:
        return None
    headers = _ops(model, "headers", str.lower)
    query = _ops(model, "query")
    body = _ops(model, "body")
    path = None
    p = getattr(model, "path", None)
    if p is not None:
        path = PathOp(p.strip_prefix, re.compile(p.regex) if p.regex else None, p.substitution or "",
                      template.parse(p.set) if p.set is not None else None)
    refs = headers.refs() | query.refs() | body.refs() | (set(path.set.refs) if path and path.set else set())
    return Side(headers, query, body, path, tuple(sorted(refs, key=lambda r: r.key)), max_body)


def compile(model: schema.Transform, route: schema.Route) -> Transform:
    path = route.match.path
    request, response = _side(model.request, model.max_body), _side(model.response, model.max_body)
    refs = {r for side in (request, response) if side is not None for r in side.refs}
    return Transform(request, response, re.compile(path.regex) if path is not None and path.regex else None,
                     tuple(sorted(refs, key=lambda r: r.key)))


# --------------------------------------------------------------------------------------------
# applying


def apply_multi(ops: Ops, m: Any, values: Values) -> None:
    """Headers or query parameters: Kong's semantics on a multi-valued, possibly case-blind map."""
    for name in ops.remove:
        if name in m:
            del m[name]
    for old, new in ops.rename:
        if old in m:
            kept = m.get_all(old)
            del m[old]
            m.set_all(new, kept)
    for name, value in ops.replace:
        if name in m:
            _put(m, name, value, values)
    for name, value in ops.set:
        _put(m, name, value, values)
    for name, value in ops.add:
        if name not in m:
            _put(m, name, value, values)
    for name, value in ops.append:
        rendered = template.render_value(value, values)
        if rendered is not MISSING:
            m.add(name, template.as_text(rendered))


def _put(m: Any, name: str, value: Any, values: Values) -> None:
    rendered = template.render_value(value, values)
    if rendered is not MISSING:
        m.set_all(name, [template.as_text(rendered)])


def apply_json(ops: Ops, doc: dict, values: Values) -> None:
    """Body fields of a JSON object; `a.b` reaches into nested objects."""
    for path in ops.remove:
        parent, leaf = _parent(doc, path, create=False)
        if parent is not None:
            parent.pop(leaf, None)
    for old, new in ops.rename:
        parent, leaf = _parent(doc, old, create=False)
        if parent is not None and leaf in parent:
            value = parent.pop(leaf)
            target, tleaf = _parent(doc, new, create=True)
            if target is not None:
                target[tleaf] = value
    for path, value in ops.replace:
        parent, leaf = _parent(doc, path, create=False)
        if parent is not None and leaf in parent:
            _assign(parent, leaf, value, values)
    for path, value in ops.set:
        rendered = template.render_value(value, values)
        parent, leaf = _parent(doc, path, create=rendered is not MISSING)
        if parent is not None and rendered is not MISSING:
            parent[leaf] = rendered
    for path, value in ops.add:
        parent, leaf = _parent(doc, path, create=False)
        if parent is not None and leaf in parent:
            continue
        rendered = template.render_value(value, values)
        parent, leaf = _parent(doc, path, create=rendered is not MISSING)
        if parent is not None and rendered is not MISSING:
            parent[leaf] = rendered
    for path, value in ops.append:
        rendered = template.render_value(value, values)
        parent, leaf = _parent(doc, path, create=rendered is not MISSING)
        if parent is None or rendered is MISSING:
            continue
        if leaf not in parent:
            parent[leaf] = [rendered]
        elif isinstance(parent[leaf], list):
            parent[leaf].append(rendered)
        else:
            parent[leaf] = [parent[leaf], rendered]


def _assign(parent: dict, leaf: str, value: Any, values: Values) -> None:
    rendered = template.render_value(value, values)
    if rendered is not MISSING:
        parent[leaf] = rendered


def _parent(doc: dict, path: str, *, create: bool) -> tuple[dict | None, str]:
    *steps, leaf = path.split(".")
    node: Any = doc
    for step in steps:
        nxt = node.get(step)
        if nxt is None and create:
            nxt = node[step] = {}
        if not isinstance(nxt, dict):
            return None, leaf
        node = nxt
    return node, leaf


def transform_body(ops: Ops, body: bytes | None, content_type: str | None, max_body: int,
                   values: Values) -> bytes | None:
    """The new body, or None to leave it untouched (no ops, not JSON, too large, not an object)."""
    if not ops or not body or len(body) > max_body or not content_type or not _JSON.match(content_type):
        return None
    try:
        doc = load_json(body)
    except (ValueError, UnicodeDecodeError):  # not JSON, or nested past the parser
        return None
    if not isinstance(doc, dict):
        return None
    apply_json(ops, doc, values)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------------
# what the templates read


def claim(claims: Mapping | None, name: str) -> Any:
    """A verified claim by dotted path; None when absent (or when there are no claims)."""
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def captures(regex: re.Pattern | None, path: str) -> dict[str, str]:
    """Groups of the route's path regex, by name and by number (1, 2, ...)."""
    if regex is None:
        return {}
    m = regex.fullmatch(path)
    if m is None:
        return {}
    out = {str(i): g for i, g in enumerate(m.groups(), 1) if g is not None}
    out.update({k: v for k, v in m.groupdict().items() if v is not None})
    return out
