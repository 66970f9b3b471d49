"""Loads a user plugin's code and options: a new instance, or a ConfigError saying file and line.

Nothing here runs a hook; addons/plugins.py places the instances in the chain. A file is imported
fresh on every load (as mitmproxy's script loader does), so an edit is picked up; a module given
as `package.module:Class` is imported once and reloaded with importlib.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from mesh.config.load import translate
from mesh.config.plugins import PluginSpec
from mesh.config.source import ConfigError, Problem, Source, show
from mesh.config.files import stamp

_PREFIX = "__mitmesh_plugin__."


@dataclass
class Loaded:
    """One instance of a plugin, and what it was made from."""

    spec: PluginSpec
    instance: Any
    file: str  # the Python file watched for edits
    stamp: tuple | None
    loaded_at: float = field(default_factory=time.time)


def source_file(spec: PluginSpec) -> str | None:
    """The Python file a plugin's code is in (None: a module that cannot be found)."""
    if spec.is_file:
        return spec.source
    try:
        found = importlib.util.find_spec(spec.source)
    except (ImportError, ValueError):
        return None
    return found.origin if found is not None else None


def load(spec: PluginSpec) -> Loaded:
    """Import the plugin's code, validate its options with its `Options` model and make an instance.
    Raises ConfigError: `mesh.yaml:LINE: plugins.NAME.KEY: problem`, where an error in the plugin's
    own code also names its file and line."""
    file = source_file(spec)
    if file is None or not os.path.isfile(file):
        raise _problem(spec, ("plugin",), f"no such {'file' if spec.is_file else 'module'}: "
                                          f"{spec.source} (got {show(spec.plugin)})")
    seen = stamp(file)
    module = _import(spec, file)
    cls = getattr(module, spec.attr, None)
    if not isinstance(cls, type):
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and v.__module__ == module.__name__)
        raise _problem(spec, ("plugin",), f"no class {spec.attr} in {file}; expected one of "
                                          f"{', '.join(found) or 'none'} (got {show(spec.attr)})")
    options = _options(spec, cls)
    try:
        instance = cls(options) if options is not None else cls()
    except Exception as e:
        raise _code_problem(spec, file, e, f"{spec.attr}() failed") from None
    return Loaded(spec, instance, file, seen)


def _import(spec: PluginSpec, file: str) -> types.ModuleType:
    if not spec.is_file:
        try:
            module = sys.modules.get(spec.source)
            return importlib.reload(module) if module is not None else importlib.import_module(spec.source)
        except Exception as e:
            raise _code_problem(spec, file, e, "import failed") from None
    name = _PREFIX + spec.name
    loader = importlib.machinery.SourceFileLoader(name, file)
    module = types.ModuleType(name)
    module.__file__ = file
    module.__loader__ = loader
    old_module, old_path = sys.modules.get(name), list(sys.path)
    # in sys.modules while it runs (pydantic and dataclasses look their module up there); its
    # directory on sys.path, so it may import the modules beside it
    sys.modules[name] = module
    sys.path.insert(0, os.path.dirname(file))
    try:
        loader.exec_module(module)
    except BaseException as e:
        if old_module is not None:
            sys.modules[name] = old_module
        else:
            sys.modules.pop(name, None)
        if not isinstance(e, Exception):
            raise
        raise _code_problem(spec, file, e, "import failed") from None
    finally:
        sys.path[:] = old_path
    return module


def _options(spec: PluginSpec, cls: type) -> BaseModel | None:
    model = getattr(cls, "Options", None)
    if model is None:
        if spec.options:
            raise _problem(spec, ("options",), f"{spec.attr} takes no options (it has no Options "
                                               f"model) (got {show(dict(spec.options))})")
        return None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise _problem(spec, ("plugin",), f"{spec.attr}.Options must be a pydantic model "
                                          f"(got {show(model)})")
    prefix = ("plugins", spec.name, "options")
    problems = []
    # a key the model does not know is a typo, as everywhere in mesh.yaml (unless it allows extras)
    if model.model_config.get("extra") != "allow":
        known = [f.alias or n for n, f in model.model_fields.items()]
        for key in spec.options:
            if key not in known and key not in model.model_fields:
                file, line, full = spec.where(("options", key))
                problems.append(Problem(file, line, full, f"unknown key; expected one of "
                                                          f"{', '.join(known)} (got {show(key)})"))
    try:
        options = model.model_validate(dict(spec.options))
    except ValidationError as e:
        lines = {k[len(prefix):]: v for k, v in spec.lines.items() if k[:len(prefix)] == prefix}
        src = Source(spec.file, dict(spec.options), lines)
        src.lines.setdefault((), spec.where(("options",))[1])
        for err in e.errors():
            p = translate(src, err, model)
            if not any(q.path == prefix + p.path for q in problems):
                problems.append(Problem(p.file, p.line, prefix + p.path, p.message))
    if problems:
        raise ConfigError(problems)
    return options


def _problem(spec: PluginSpec, path: tuple, message: str) -> ConfigError:
    file, line, full = spec.where(path)
    return ConfigError([Problem(file, line, full, message)])


def code_line(file: str, e: BaseException) -> int | None:
    """The line of `file` an exception was raised at (the innermost frame in that file)."""
    if isinstance(e, SyntaxError) and e.filename == file:
        return e.lineno
    found = None
    for frame in traceback.extract_tb(e.__traceback__):
        if frame.filename == file:
            found = frame.lineno
    return found


def _code_problem(spec: PluginSpec, file: str, e: Exception, what: str) -> ConfigError:
    line = code_line(file, e)
    detail = e.msg if isinstance(e, SyntaxError) else str(e)
    return _problem(spec, ("plugin",), f"{what}: {file}:{line or 1}: {type(e).__name__}: {detail}")
