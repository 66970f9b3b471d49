"""Modules a proxy imports but seldom runs, deferred until something reads from them.

mitmproxy and its libraries import, at their top, modules that only some paths use: pyparsing
(with unittest, difflib and html.entities) and the filter grammar built with it, for commands typed
as text and filter expressions; ruamel.yaml for option files; service_identity (with attrs and idna)
for QUIC certificates; the brotli and zstd codecs; bcrypt for encrypted SSH keys; html, pprint and
mimetypes for error pages, debug output and multipart forms; ifaddr for IPv6 interfaces; the QUIC
and HTTP/3 layers, with aioquic and pylsqpack, for QUIC traffic; mitmproxy_rs (an 8 MB extension)
for UDP, WireGuard, local and TUN modes. A proxy runs none of them unless a request or a user asks
(a recording with a filter, a brotli body, a QUIC listener), yet building them cost every proxy
~13 MB of memory and ~0.2 s of CPU at start (docs/performance.md §11).

`install()` (proxy workers and the fork server only, before mitmproxy is imported) makes `import X`
of a name in DEFERRED bind a `Deferred` module: the real module runs at the first read of any of its
attributes, under a lock and with the exceptions its import would raise, and the stub then holds its
namespace. Names other modules take from it at their import get stand-ins: a forwarding function
(DEFERRED) or a stand-in class (CLASSES) that `isinstance` can be asked about without running the
module. Importing a submodule of a deferred package runs the package first, as a real import does.
A module that is not installed still fails at the import (so `try: import X except
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
    "mitmproxy.proxy.layers.quic": ("quic_parse_client_hello_from_datagrams",),
    "mitmproxy.proxy.layers.http._http3": (),
    "mitmproxy_rs": (),
}

# name -> the classes other modules take by name: each gets a stand-in class (`_DeferredClass`)
# that runs the module when called or read from, and answers isinstance() without running it while
# no instance can exist (mitmproxy's HTTP layer and next_layer take QUIC's and HTTP/3's layers)
CLASSES: dict[str, tuple[str, ...]] = {
    "mitmproxy.proxy.layers.quic": (
        "QuicStreamEvent", "ClientQuicLayer", "QuicStreamLayer", "RawQuicLayer", "ServerQuicLayer"),
    "mitmproxy.proxy.layers.http._http3": ("Http3Client", "Http3Server"),
    # mitmproxy's server reads `mitmproxy_rs.Stream` in annotations and checks each listener
    # against the UDP and WireGuard servers (a name with a dot is in a submodule)
    "mitmproxy_rs": ("Stream", "udp.UdpServer", "wireguard.WireGuardServer"),
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


class _DeferredClass(type):
    """A class taken by name from a deferred module. Calling it or reading an attribute it lacks
    (not a dunder) runs the module. `isinstance` and `issubclass` run it only when the object's
    class could come from it (a class of that module or its submodules in its MRO): until the
    module has run, no instance of its classes can exist."""

    _module: Deferred
    _name: str

    def real(cls) -> type:
        found: Any = run(cls._module)
        for part in cls._name.split("."):
            found = getattr(found, part)
        return found

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            # typing's probes (`__origin__`, `__args__`, ...) from a union's repr
            raise AttributeError(name)
        return getattr(cls.real(), name)

    def _may_be(cls, klass: type) -> bool:
        name = cls._module.__name__
        inside = name + "."  # the module itself or one of its submodules
        return name in _ran or any(f"{c.__module__}.".startswith(inside) for c in klass.__mro__)

    def __instancecheck__(cls, obj: Any) -> bool:
        return cls._may_be(type(obj)) and isinstance(obj, cls.real())

    def __subclasscheck__(cls, klass: type) -> bool:
        return cls._may_be(klass) and issubclass(klass, cls.real())


class _Submodule:
    """A submodule of a deferred module, holding stand-in classes; anything else read runs it."""

    def __init__(self, module: Deferred, name: str) -> None:
        self.__name = f"{module.__name__}.{name}"
        self.__module = module
        self.__part = name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(getattr(run(self.__module), self.__part), name)

    def __repr__(self) -> str:
        return f"<deferred submodule {self.__name}>"


def _bind_class(module: Deferred, name: str) -> None:
    """A stand-in for the class `name` of `module` (`sub.Class`: of its submodule `sub`), bound
    where the real one will be."""
    owner, _, short = name.rpartition(".")
    holder: Any = module
    if owner:  # one level of submodule is all mitmproxy needs
        holder = module.__dict__.get(owner) or _Submodule(module, owner)
        setattr(module, owner, holder)
    setattr(holder, short, _DeferredClass(short, (), {
        "_module": module, "_name": name, "__qualname__": short,
        "__module__": f"{module.__name__}.{owner}" if owner else module.__name__,
        "__doc__": f"{module.__name__}.{name}, run at its first use (mesh/runtime/deferred.py)"}))


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return Deferred(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        assert isinstance(module, Deferred)
        for attribute in DEFERRED[module.__name__]:
            setattr(module, attribute, _forwarder(module, attribute))
        for name in CLASSES.get(module.__name__, ()):
            _bind_class(module, name)


class _Present(importlib.abc.Loader):
    """Hands the import system a submodule its package made while it ran, as it was. The import
    system, finding the name made meanwhile, would load the module again from its own `__spec__`
    (a second copy of a file module, with classes of its own) unless that is None: `hand_over`
    clears it, and `exec_module` puts it back, with `__loader__`."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.was = {k: module.__dict__[k] for k in ("__spec__", "__loader__")
                    if k in module.__dict__}

    def hand_over(self) -> importlib.machinery.ModuleSpec:
        self.module.__spec__ = None
        return importlib.machinery.ModuleSpec(self.module.__name__, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        for key in ("__spec__", "__loader__"):
            if key in self.was:
                setattr(module, key, self.was[key])
            else:
                module.__dict__.pop(key, None)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        parent = sys.modules.get(name.rpartition(".")[0])
        if isinstance(parent, Deferred):
            # a submodule of a deferred package: the package runs first, as a real import does
            run(parent)
            made = sys.modules.get(name)  # by the package (mitmproxy_rs's have no file)
            return _Present(made).hand_over() if made is not None else None
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
