"""mitmesh addons in plain mitmdump or mitmweb, without mesh.yaml: each addon's `--set` option holds
its block of mesh.yaml, and every request takes one route that carries those blocks.

    mitmdump --mode reverse:http://127.0.0.1:9101 -s addons/ratelimit.py --set mesh_rate_limit='{minute: 60, key: ip}'

An option is checked by the schema of mesh.yaml (same messages) and compiled by the same code
(`mesh.core.build.compile_config`), so the addon's hooks find what they find in the chain: a FlowState
whose route holds the compiled policy. Scripts loaded together share that route and one MeshState;
load them in the order of addons/chain.py (CORS before authentication before rate limits).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from mitmproxy import ctx, exceptions, http
from pydantic import BaseModel

from addons import keys
from addons.hopbyhop import HopByHop
from addons.normalize import Normalize
from addons.requestid import RequestId
from mesh.config import ConfigError, load_block
from mesh.config.schema import MeshConfig
from mesh.core.build import compile_config
from mesh.core.state import MeshState, Snapshot

ROUTE = "mitmdump"  # the one route (and its service), as decisions, logs and metrics name it
FILE = os.path.join(os.getcwd(), "mitmdump options")  # relative paths in options start here

_state: MeshState | None = None
_hopbyhop = HopByHop()
_normalize = Normalize()
_blocks: dict[tuple[str, str], BaseModel] = {}  # (section, key) → the validated block
log = logging.getLogger("mitmesh.alone")


def state() -> MeshState:
    """The MeshState every addon loaded alone shares, as the chain's addons share one."""
    global _state
    if _state is None:
        _state = MeshState()
    return _state


@dataclass(frozen=True)
class Block:
    """One option: the block of mesh.yaml it holds. `section` is `policies` (a policy kind of the
    one route) or the top-level key the block sits under (`observability`, `gateway`)."""

    option: str
    section: str
    key: str
    model: type[BaseModel]
    help: str

    def set(self, text: str) -> None:
        if text.strip():
            try:
                _blocks[(self.section, self.key)] = load_block(text, self.model, self.option)
            except ConfigError as e:
                raise exceptions.OptionsError(str(e)) from None
        else:
            _blocks.pop((self.section, self.key), None)
        install()


def install() -> Snapshot:
    """Compile the blocks set so far into a config of one route and put it in service."""
    policies = {k: v for (section, k), v in _blocks.items() if section == "policies"}
    doc: dict = {
        "gateway": {"listeners": [{"name": ROUTE, "port": ctx.options.listen_port or 8080}], "identity": ROUTE},
        "services": {ROUTE: {"versions": {"v1": {}}}},
        "policies": {ROUTE: policies} if policies else {},
        "routes": [{"name": ROUTE, "match": {"path": {"prefix": "/"}}, "forward": {"service": ROUTE},
                    "policies": [ROUTE] if policies else []}],
    }
    for (section, key), block in _blocks.items():
        if section != "policies":
            doc.setdefault(section, {})[key] = block
    config = MeshConfig.model_validate(doc)
    return state().install(compile_config(config, FILE, "", state().runtime))


class Flows(RequestId):
    """What Config, HopByHop, RequestId, Normalize and Router do for the chain, here for every flow
    of plain mitmproxy: a FlowState on the one route, the fields Connection nominates removed, a
    request id and the normalized path (a request Normalize refuses is answered here). It also
    declares the script's options."""

    def __init__(self, script: str, blocks: tuple[Block, ...]):
        self.name = f"mitmesh-alone-{script}"  # one per script: mitmproxy wants unique names
        self.blocks = blocks

    def load(self, loader):
        for b in self.blocks:
            loader.add_option(b.option, str, "", b.help)

    def configure(self, updated):
        for b in self.blocks:
            if b.option in updated:
                b.set(getattr(ctx.options, b.option))
        if state().snapshot is None:
            install()

    def running(self):
        # mitmdump listens before its watcher loads `-s` scripts: a request that arrives meanwhile
        # waits for the load. This line is the readiness signal: the script's hooks are in place.
        log.info(f"{self.name} ready ({', '.join(b.option for b in self.blocks) or 'no options'})")

    def requestheaders(self, flow: http.HTTPFlow):
        if keys.get(flow) is not None:  # an earlier script's Flows began it
            return
        snap = state().snapshot
        st = keys.begin(flow, snap, None)
        _hopbyhop.requestheaders(flow)
        super().requestheaders(flow)
        _normalize.requestheaders(flow)
        if flow.response:
            return
        st.route = snap.routes.routes[0]
        flow.metadata[keys.ROUTE] = ROUTE


def script(*addons, blocks: tuple[Block, ...] = ()) -> list:
    """The `addons` list of a script that runs `addons` without the chain, configured by `blocks`."""
    return [Flows(type(addons[-1]).__name__.lower(), tuple(blocks)), *addons]
