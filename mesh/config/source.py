"""Reads a YAML config into plain data plus the line of every key, so errors can name their line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, in the shape `<file>:<line>: <key path>: <problem>`."""

    file: str
    line: int
    path: Path
    message: str

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{self.file}:{self.line}: {where + ': ' if where else ''}{self.message}"


class ConfigError(ValueError):
    """A config that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, format_path(p.path)))
        super().__init__("\n".join(str(p) for p in self.problems))


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def show(value: Any) -> str:
    """A short, unambiguous rendering of a user's value for `(got …)`."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class Source:
    """Parsed YAML: `data` as plain Python, `lines` mapping each key path to its 1-based line."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def problem(self, path: Path, message: str) -> Problem:
        return Problem(self.file, self.line_of(path), tuple(path), message)


# libyaml's parser where PyYAML was built with it: the same nodes and marks as the pure-Python one,
# 3-10 times faster (2,000 routes: 0.8 s against 2.8 s). A gateway parses its config in the
# supervisor and again in each worker: the bench's 10,000 routes were most of its start-up.
_FAST = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str, file: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    """The loader (to construct values with) and the document's root node; a syntax error is
    reported as the pure-Python parser words it (what it expected, and where)."""
    if _FAST is not yaml.SafeLoader:
        loader = _FAST(text)
        try:
            return loader, loader.get_single_node()
        except yaml.YAMLError:
            loader.dispose()  # parsed again below, for the message
    loader = yaml.SafeLoader(text)
    try:
        return loader, loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        loader.dispose()
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([Problem(file, line, (), f"invalid YAML: {e.problem or e}")]) from None
    except yaml.YAMLError as e:
        loader.dispose()
        raise ConfigError([Problem(file, 1, (), f"invalid YAML: {e}")]) from None


def parse(text: str, file: str) -> Source:
    """Parse YAML text; raises ConfigError for syntax errors and duplicate keys."""
    loader, node = _compose(text, file)
    src = Source(file, None)
    problems: list[Problem] = []
    try:
        if node is None:
            src.data = {}
            return src
        src.data = _walk(loader, node, (), src, problems)
    finally:
        loader.dispose()
    if problems:
        raise ConfigError(problems)
    return src


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: Path, src: Source, problems: list) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(loader, key_node, path, src, problems)
            if key is _INVALID:
                continue
            if not isinstance(key, (str, int, float, bool)):
                problems.append(
                    Problem(src.file, key_node.start_mark.line + 1, path, f"keys must be plain scalars (got {show(key)})")
                )
                continue
            key = str(key) if not isinstance(key, str) else key
            sub = path + (key,)
            if key in out:
                problems.append(
                    Problem(src.file, key_node.start_mark.line + 1, sub,
                            f"duplicate key (first at line {src.lines[sub]})")
                )
                continue
            src.lines[sub] = key_node.start_mark.line + 1
            out[key] = _walk(loader, value_node, sub, src, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            src.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_walk(loader, item, path + (i,), src, problems))
        return items
    value = _construct(loader, node, path, src, problems)
    return None if value is _INVALID else value


_INVALID = object()  # a scalar YAML cannot construct: its problem is recorded


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: Path, src: Source,
               problems: list) -> Any:
    """A node's value; a scalar that parses but does not construct (the date 2026-13-45, bad
    !!binary) is a problem at its line, where PyYAML raises from deep inside its constructor."""
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError, TypeError) as e:
        problem = e.problem if isinstance(e, yaml.MarkedYAMLError) and e.problem else str(e)
        what = f"invalid YAML value {show(node.value)}" if isinstance(node, yaml.ScalarNode) \
            else "invalid YAML value"
        problems.append(Problem(src.file, node.start_mark.line + 1, path, f"{what}: {problem}"))
        return _INVALID
