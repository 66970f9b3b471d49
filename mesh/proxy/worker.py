"""Entry point of a proxy worker process (`python -O -m mesh.proxy.worker`): the lean runtime, started lean.

`mitmproxy/addons/__init__.py` imports all ~50 default addons (flask, the web UI, ...) whenever any
one addon module is imported; the lean runtime uses five. Registering the package without running
its `__init__` lets those five load alone: a worker starts in 1.2 s of CPU instead of 1.8 s and
holds 12 MB less, which counts for sidecars, one per service instance. The modules mitmproxy and
its libraries import but a proxy seldom runs (pyparsing and the filter grammar, ruamel.yaml, codecs,
the QUIC and HTTP/3 layers with aioquic, mitmproxy_rs, ...) are deferred until first used
(mesh/runtime/deferred.py): ~13 MB less again. Only worker processes and the fork server do this
(tests and mitmdump import mitmproxy normally).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

from mesh.runtime import deferred


def _lean_addons_package() -> None:
    if "mitmproxy.addons" in sys.modules:
        return
    spec = importlib.util.find_spec("mitmproxy")
    if spec is None or spec.origin is None:
        return
    package = types.ModuleType("mitmproxy.addons")
    package.__path__ = [os.path.join(os.path.dirname(spec.origin), "addons")]
    package.__package__ = "mitmproxy.addons"
    sys.modules["mitmproxy.addons"] = package


def lean() -> None:
    """Before mitmproxy is imported: its addons package without its `__init__`, and the deferred modules."""
    _lean_addons_package()
    deferred.install()


if __name__ == "__main__":
    lean()
    from mesh.proxy import master as runtime

    sys.exit(runtime.main())
