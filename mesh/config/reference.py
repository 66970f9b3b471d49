"""The docs' view of the schema: the config reference generated from it, and the check of examples.

`render()` walks the models of mesh.yaml in tree order (the order fields are declared in) and writes
one section per mapping with every key: its type, default, allowed values and the `Field`
description, so docs/reference/config.md cannot drift from the schema (`mitmesh docs config`
writes it, a test compares). `check_example()` validates a YAML example of the docs against the
schema, whole or as a fragment (see docs/README.md, "YAML examples").
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .load import _translate, load_text
from .schema import MeshConfig
from .source import ConfigError, Problem, format_path, parse

OUTPUT = FsPath("docs") / "reference" / "config.md"
COMMAND = "`mitmesh docs config` (or `just docs`)"

# the value types of types.py and friends, named by the function that checks them
_KINDS = {
    "parse_duration": ("duration", ""),
    "parse_size": ("size", ""),
    "check_name": ("name", ""),
    "check_address": ("IP address", ""),
    "check_regex": ("regex", "Python regular expression"),
    "check_header": ("header name", "matched case-insensitively"),
    "check_header_name": ("header name", "an HTTP token, case kept"),
    "check_cidr": ("CIDR", "an address or block, e.g. 10.0.0.0/8"),
    "split_hostport": ("endpoint", "host:port, or a mapping"),
    "template.check": ("template", "$(headers.NAME), $(query.NAME), $(path.NAME), $(claims.NAME), |default"),
    "template.check_value": ("JSON value", "strings are templates"),
    "_pattern": ("pattern", "exact, prefix*, *suffix or *"),
    "_path_pattern": ("path pattern", "exact, /prefix*, *suffix or *"),
    "_origin": ("origin", "scheme://host[:port], with *. for subdomains, or *"),
    "_http_url": ("URL", "http:// or https://"),
    "_body_path": ("JSON field", "a.b for nested fields"),
    "_check_storage": ("storage", "memory, or redis://host:port/db (rediss://, async+redis://)"),
    "_check_shared": ("Redis URI", "redis://host:port/db, rediss://, unix://"),
    "_date": ("date", "e.g. 2027-06-30"),
    "_deprecated": ("true, false or a date", "e.g. 2026-01-01"),
    "_sha256_list": ("SHA-256 hex digest(s)", "one, or a list (key rotation)"),
    "_enabled_shorthand": ("", "true is the defaults, false is off"),
}


# ---------------------------------------------------------------------------------------------
# the reference


@dataclass
class Section:
    """One mapping of the tree: its key path, what it is, and a row per key."""

    path: str
    doc: str
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)


def anchor(path: str) -> str:
    """`policies.<name>.rate_limit` → `policies-rate_limit`, stable for links from the how-tos."""
    parts = [p for p in re.split(r"\.|\[\]", path) if p and not p.startswith("<")]
    return "-".join(parts) or "top"


def sections(root: type[BaseModel] = MeshConfig) -> list[Section]:
    """Every mapping of the config tree, depth first in declaration order."""
    out: list[Section] = []
    _walk(root, "", _doc(root), out)
    return out


def _walk(model: type[BaseModel], path: str, doc: str, out: list[Section]) -> None:
    if not model.__pydantic_complete__:
        model.model_rebuild()  # resolve forward references (a field typed by a model defined later)
    section = Section(path, doc)
    out.append(section)
    children: list[tuple[type[BaseModel], str, str]] = []
    for name, info in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        tp, meta = _split(info.annotation, list(info.metadata))
        kind, allowed, inner, suffix = _describe(tp, meta)
        default = _default(info, meta)
        description = info.description or ""
        if inner is not None:
            child = key + suffix
            description = description or _doc(inner)
            kind = f"{kind} ([{child}](#{anchor(child)}))"
            children.append((inner, child, _doc(inner)))
        section.rows.append((f"`{key}`", kind, default, allowed, description))
    for inner, child, doc in children:
        _walk(inner, child, doc, out)


def render(root: type[BaseModel] = MeshConfig) -> str:
    """docs/reference/config.md as text."""
    lines = [
        "# Configuration reference: `mesh.yaml`",
        "",
        "<!-- Generated from the schema (mesh/config/schema.py and friends) by `mitmesh docs config`",
        "     (or `just docs`). Do not edit by hand: change a Field's description, then regenerate. -->",
        "",
        "Every key of `mesh.yaml`, in the order of the tree (listeners → routes → clusters →",
        "endpoints, then policies). Each section is one mapping; `<name>` stands for a key you choose",
        "and `[]` for an item of a list. Value types: a *duration* is `250ms`, `2s`, `1.5m`, `1h` or a",
        "number of seconds; a *size* is bytes or `64KiB`, `1MiB`, `10MB`, `1GiB`; a *name* is 1 to 63",
        "lowercase letters, digits, `.`, `-` or `_`; a *header name* is matched case-insensitively.",
        "Unknown keys are errors. `mitmesh validate FILE` checks a file against exactly this schema,",
        "with `file:line: key path: problem (got value)` errors. How to use each part: [the how-to",
        "guides](../README.md).",
        "",
        "Contents:",
        "",
    ]
    all_sections = sections(root)
    for s in all_sections[1:]:
        indent = "  " * (anchor(s.path).count("-"))
        lines.append(f"{indent}- [`{s.path}`](#{anchor(s.path)})")
    lines.append("")
    for s in all_sections:
        title = f"`{s.path}`" if s.path else "The top level"
        lines += [f'<a id="{anchor(s.path)}"></a>', "", f"## {title}", ""]
        if s.doc:
            lines += [s.doc, ""]
        lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for row in s.rows:
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def write(path: FsPath = OUTPUT) -> bool:
    """Write the reference; True when the file changed."""
    text = render()
    old = path.read_text() if path.exists() else None
    if old == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "–"


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    if doc.startswith(f"{model.__name__}(") or doc == BaseModel.__doc__:
        return ""  # pydantic's generated signature, not a description
    return " ".join(doc.split())


def _split(tp: Any, meta: list[Any]) -> tuple[Any, list[Any]]:
    """Peel Annotated layers, collecting their metadata."""
    while typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        tp, meta = args[0], meta + list(args[1:])
    flat: list[Any] = []
    for m in meta:
        if isinstance(m, FieldInfo):
            flat.extend(m.metadata)
        else:
            flat.append(m)
    return tp, flat


def _bounds(meta: list[Any]) -> list[str]:
    show = _num
    kind = _named_kind(meta)
    if kind and kind[0] == "duration":
        show = _duration
    elif kind and kind[0] == "size":
        show = _size
    lo = hi = None
    out = []
    for m in meta:
        if isinstance(m, at.Ge):
            lo = f"{show(m.ge)}"
        elif isinstance(m, at.Gt):
            lo = f"more than {show(m.gt)}"
        elif isinstance(m, at.Le):
            hi = f"{show(m.le)}"
        elif isinstance(m, at.Lt):
            hi = f"less than {show(m.lt)}"
        elif isinstance(m, at.MinLen) and m.min_length:
            out.append(f"at least {m.min_length} item{'s' if m.min_length > 1 else ''}")
        elif isinstance(m, at.MaxLen):
            out.append(f"at most {m.max_length} items")
    if lo is not None and hi is not None:
        out.insert(0, f"{lo} to {hi}" if not lo.startswith("more") else f"{lo}, at most {hi}")
    elif lo is not None:
        out.insert(0, lo if lo.startswith("more") else f"≥ {lo}")
    elif hi is not None:
        out.insert(0, f"≤ {hi}" if not hi.startswith("less") else hi)
    return out


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= 1 << 20 and value & (value - 1) == 0:
        return f"2^{value.bit_length() - 1}"
    return f"{value:,}".replace(",", "_") if isinstance(value, int) and value >= 100_000 else str(value)


def _named_kind(meta: list[Any]) -> tuple[str, str] | None:
    for m in meta:
        func = getattr(m, "func", None)
        if func is None:
            continue
        module = func.__module__.rsplit(".", 1)[-1]
        for key in (f"{module}.{func.__name__}", func.__name__):
            if key in _KINDS:
                return _KINDS[key]
    return None


def _describe(tp: Any, meta: list[Any]) -> tuple[str, str, type[BaseModel] | None, str]:
    """(type, allowed values, the model inside if any, the key suffix leading to it)."""
    tp, meta = _split(tp, meta)
    named = _named_kind(meta)
    allowed = _bounds(meta)
    origin = typing.get_origin(tp)
    if named and named[0] and origin in (list, dict):
        return named[0], _join(allowed + [named[1]]), None, ""
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            kind, more, inner, suffix = _describe(arms[0], meta)
            return kind, _join(allowed + ([more] if more else [])), inner, suffix
        kinds = [_describe(a, [])[0] for a in arms]
        return " or ".join(kinds), _join(allowed), None, ""
    if origin is typing.Literal:
        args = typing.get_args(tp)
        values = ", ".join(f"`{_yaml(v)}`" for v in args)
        base = _base(type(args[0])) if len({type(a) for a in args}) == 1 else "value"
        return base, (f"one of {values}" if len(args) > 1 else f"only {values}"), None, ""
    if origin is list:
        (item,) = typing.get_args(tp)
        kind, more, inner, suffix = _describe(item, [])
        return f"list of {_plural(kind)}", _join(allowed + ([more] if more else [])), inner, "[]" + suffix
    if origin is dict:
        key, value = typing.get_args(tp)
        kkind = _describe(key, [])[0]
        kind, more, inner, suffix = _describe(value, [])
        placeholder = "<name>" if kkind == "name" else "<key>"
        return (f"mapping: {kkind} → {kind}", _join(allowed + ([more] if more else [])), inner,
                f".{placeholder}" + suffix)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        extra = [named[1]] if named else []
        return "mapping", _join(allowed + extra), tp, ""
    if named:
        return named[0] or _base(tp), _join(allowed + [named[1]]), None, ""
    return _base(tp), _join(allowed), None, ""


def _plural(kind: str) -> str:
    if " or " in kind or kind.endswith(")"):
        return kind
    return kind + ("es" if kind.endswith(("s", "x")) else "s")


def _join(parts: list[str]) -> str:
    return "; ".join(p for p in parts if p)


def _base(tp: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", Any: "any",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default(info: FieldInfo, meta: list[Any]) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        changed = value.model_dump(exclude_defaults=True, mode="json")
        return f"`{_yaml(changed)}`" if changed else "defaults below"
    named = _named_kind(_split(info.annotation, list(meta))[1])
    if named and named[0] == "duration" and isinstance(value, (int, float)):
        return f"`{_duration(float(value))}`"
    if named and named[0] == "size" and isinstance(value, int):
        return f"`{_size(value)}`"
    return f"`{_yaml(value)}`"


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0 and seconds < 600:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _size(n: int) -> str:
    n = int(n)
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _yaml(value: Any) -> str:
    """A value as YAML flow text: true, 1.5, [a, b], {a: 1}."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and (not value or re.search(r"[:#{}\[\],&*?|<>=!%@`'\"]|^[-\s]|\s$", value)):
        return json.dumps(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# YAML examples of the docs


SCHEMA_MARK = re.compile(r"^#\s*schema:\s*(\S+)\s*$")


def check_example(text: str, file: str, first_line: int) -> list[Problem]:
    """Validate one ```yaml block of the docs (its first line is `first_line` of `file`).

    - A block starting with `version: 1` is a whole mesh.yaml: checked as `mitmesh validate` does.
    - A block whose first line is `# schema: none` is not mesh.yaml (e.g. a Prometheus file): skipped.
    - A block whose first line is `# schema: KEY.PATH` (e.g. `policies.<name>.rate_limit`) is
      the whole value of that key, as a mitmdump `--set mesh_rate_limit=…` option is: checked
      against the model at that path of the tree, required keys included.
    - Any other block is a fragment of mesh.yaml: its keys and values are checked against the
      schema; only the required keys it leaves out are not reported (references between sections,
      such as a route's policy names, are checked in whole configs only).
    """
    head = text.lstrip("\n").split("\n", 1)[0].strip()
    mark = SCHEMA_MARK.match(head)
    if mark and mark.group(1) == "none":
        return []
    sections()  # resolves every forward reference, so unknown keys list what is expected
    # a problem without a line of its own (a missing key) is placed at the block's first line
    return [p if p.line >= first_line else dataclasses.replace(p, line=first_line)
            for p in _check(text, file, first_line, head, mark)]


def _check(text: str, file: str, first_line: int, head: str, mark: re.Match | None) -> list[Problem]:
    padded = "\n" * (first_line - 1) + text
    try:
        src = parse(padded, file)
    except ConfigError as e:
        return e.problems
    if head.startswith("version:"):
        try:
            load_text(padded, file)
        except ConfigError as e:
            return e.problems
        return []
    model: Any = MeshConfig
    if mark:
        model = model_at(mark.group(1))
        if model is None:
            return [Problem(file, first_line, (), f"schema: no mapping at key path {mark.group(1)!r}")]
    if not isinstance(src.data, dict):
        return [src.problem((), f"expected a mapping (got {type(src.data).__name__})")]
    problems: list[Problem] = []
    try:
        model.model_validate(src.data)
    except ValidationError as e:
        whole = mark is not None  # a marked block is the whole value of its key
        problems = [_translate(src, err, model) for err in e.errors() if whole or err["type"] != "missing"]
    return problems


def model_at(path: str) -> type[BaseModel] | None:
    """The model at a key path such as `policies.<name>.rate_limit` or `gateway.listeners[]`."""
    tp: Any = MeshConfig
    for part in [p for p in re.split(r"\.|(?=\[\])", path) if p]:
        tp, _ = _split(tp, [])
        tp = _strip_optional(tp)
        if part == "[]" and typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        elif part.startswith("<") and typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return None
    tp = _strip_optional(_split(tp, [])[0])
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return _split(arms[0], [])[0]
    return tp


YAML_FENCE = re.compile(r"^(\s*)```yaml\s*$")


def yaml_blocks(text: str) -> list[tuple[int, str]]:
    """Every ```yaml block of a Markdown text: (line of its first content line, its text)."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = YAML_FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start, body = len(m.group(1)), i + 2, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        out.append((start, "\n".join(body) + "\n"))
        i += 1
    return out


__all__ = ["COMMAND", "OUTPUT", "check_example", "format_path", "model_at", "render", "sections",
           "write", "yaml_blocks"]
