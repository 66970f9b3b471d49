"""Modules a proxy imports but seldom runs, deferred until something reads from them.

mitmproxy and its libraries import, at their top, modules that only some paths use: pyparsing
(with unittest, difflib and html.entities) and the filter grammar built with it, for commands typed
as text and filter expressions; ruamel.yaml for option files; service_identity (with attrs and idna)
for QUIC certificates; the brotli and zstd codecs; bcrypt for encrypted SSH keys; html, pprint and
mimetypes for error pages, debug output and multipart forms; ifaddr for IPv6 interfaces. A proxy
runs none of them unless a request or a user asks (a recording with a filter, a brotli body), yet
building them cost every proxy ~8 MB of memory and ~0.2 s of CPU at start (docs/performance.md §11).

`install()` (proxy workers and the fork server only, before mitmproxy is imported) makes `import X`
of a name in DEFERRED bind a `Deferred` module: the real module runs at the first read of any of its
attributes, under a lock and with the exceptions its import would raise, and the stub then holds its
namespace. A module that is not installed still fails at the import (so `try: import X except
ImportError` still works); one whose code fails, at its first use. PEP 690 proposed this for every
import; here it is a short list, each checked by tests/mesh/test_deferred.py.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import types
from typing import Any, Callable

# name -> the functions other modules take by name at their import (`from X import f`): the stub
# gives each a forwarder that runs the module at its first call (mitmproxy.command takes
# command_lexer's unquote, cryptography's SSH keys bcrypt's kdf; the others are read when used)
DEFERRED: dict[str, tuple[str, ...]] = {
    "pyparsing": (),
    "mitmproxy.command_lexer": ("unquote",),
    "mitmproxy.flowfilter": (),
    "ruamel.yaml": (),
    "service_identity": (),
    "brotli": (),
    "backports.zstd": (),
    "bcrypt": ("kdf",),
    "html": (),
    "pprint": (),
    "mimetypes": (),
    "ifaddr": (),
}

# what the import system reads from a module it is still making (and `hasattr(m, "__path__")`
# from anyone asking whether a module is a package): answered by the stub, never running it
_PROBED = frozenset(("__file__", "__cached__", "__path__"))

_lock = threading.RLock()
_running: set[str] = set()  # names the finder leaves to the real import while they run
_ran: dict[str, types.ModuleType] = {}  # name -> the real module, once run


class Deferred(types.ModuleType):
    """A module bound by its import but not yet run; any attribute it lacks runs it."""

    def __getattr__(self, name: str) -> Any:
        if name in _PROBED:
            raise AttributeError(name)
        return getattr(run(self), name)


def run(module: types.ModuleType) -> types.ModuleType:
    """The real module behind `module` (itself when it is not deferred), run once."""
    if not isinstance(module, Deferred):
        return module
    name = module.__name__
    real = _ran.get(name)
    if real is not None:
        return real
    with _lock:
        real = sys.modules.get(name)
        if real is module or real is None:
            sys.modules.pop(name, None)
            _running.add(name)
            try:
                real = importlib.import_module(name)
            except BaseException:
                sys.modules[name] = module  # as a failed import: the next read tries again
                raise
            finally:
                _running.discard(name)
        module.__dict__.update(real.__dict__)  # later reads of the stub are plain reads
        _ran[name] = real
        return real


def _forwarder(module: Deferred, attribute: str) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return getattr(run(module), attribute)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = attribute
    forward.__doc__ = f"{module.__name__}.{attribute}, run at its first call (mesh/runtime/deferred.py)"
    return forward


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return Deferred(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        assert isinstance(module, Deferred)
        for attribute in DEFERRED[module.__name__]:
            setattr(module, attribute, _forwarder(module, attribute))


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in DEFERRED or name in _running:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                # the real spec's origin, cache and search path; our loader makes and fills the stub
                spec.loader = _Loader()
                return spec
        return None


def install() -> None:
    """Defer DEFERRED from now on, in this process (idempotent; names already imported stay)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def pending() -> list[str]:
    """The deferred modules of this process that nothing has run yet."""
    return sorted(n for n, m in list(sys.modules.items()) if isinstance(m, Deferred))
