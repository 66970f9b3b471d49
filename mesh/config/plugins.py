"""User plugins in mesh.yaml: the `plugins:` model, its reference checks, and its compiled plan.

A plugin is a user's mitmproxy addon placed in one chain (the gateway's, a sidecar's inbound or
outbound flows) at a position named after a built-in stage (`after: authn`, `before: forward`).
Routes (`routes[].plugins`) and services (`services.NAME.plugins`, for sidecars) list the plugins
they use, as they list policies; `all_routes: true` applies a plugin to every route of its chain.
The code itself is loaded by mesh/runtime/plugins.py; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping

from pydantic import Field, model_validator

from mesh.config.source import Path, Problem, Source, show
from mesh.config.types import Duration, Model, one_of

if TYPE_CHECKING:
    from mesh.config.schema import MeshConfig

GATEWAY, SIDECAR_INBOUND, SIDECAR_OUTBOUND = "gateway", "sidecar_inbound", "sidecar_outbound"

# The built-in stages a plugin may be placed next to, in chain order (addons/chain.py; a test keeps
# them equal). The response-side observers (decisions, metrics, access log) are not among them: a
# plugin always runs before them, so its decisions and errors are logged and counted.
GATEWAY_STAGES = ("hopbyhop", "requestid", "normalize", "tracing", "sanitize", "tls", "ipfilter",
                  "router", "cors", "sizelimit", "versioning", "auththrottle", "authn", "authz",
                  "ratelimit", "idempotency", "canary", "transform", "forwarded", "mirror", "function",
                  "forward", "securityheaders")
SIDECAR_STAGES = ("hopbyhop", "requestid", "normalize", "tracing", "tls", "inbound", "authz",
                  "outbound", "idempotency", "forwarded", "forward")
STAGES = {GATEWAY: GATEWAY_STAGES, SIDECAR_INBOUND: SIDECAR_STAGES, SIDECAR_OUTBOUND: SIDECAR_STAGES}
# the stage that picks the route: before it a flow has none, so only an all_routes plugin fits there
ROUTING = {GATEWAY: "router", SIDECAR_INBOUND: "inbound", SIDECAR_OUTBOUND: "outbound"}


class Plugin(Model):
    """One user plugin: its code, where it runs, what it may cost, and its options."""

    plugin: str = Field(
        description="the code: a Python file relative to the config file (`plugins/tenant.py`, class "
                    "`Plugin`), `FILE.py:Class`, or an importable `package.module:Class`")
    chain: Literal["gateway", "sidecar_inbound", "sidecar_outbound"] = Field(
        GATEWAY, description="where it runs: the gateway, a sidecar's inbound flows (to its app) or its "
                             "outbound flows (from its app) (default gateway)")
    after: str | None = Field(None, description="runs right after this built-in stage, e.g. authn")
    before: str | None = Field(None, description="runs right before this built-in stage, e.g. forward")
    all_routes: bool = Field(False, description="apply to every route of its chain, not only to the "
                                                "routes (or services) that list it (default false)")
    budget: Annotated[Duration, Field(gt=0)] = Field(
        0.05, description="a hook that runs longer is reported in the decision log and counted in "
                          "mitmesh_plugin_slow_total (default 50ms)")
    timeout: Annotated[Duration, Field(gt=0)] = Field(
        5.0, description="an async hook still running after this is cancelled and the request "
                         "answered 504 (default 5s); a sync hook cannot be interrupted, only reported")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="the plugin's options, validated by its Options model")

    @model_validator(mode="after")
    def _one_position(self) -> Plugin:
        one_of(self, ("after", "before"))
        return self


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One plugin as compiled from the config: where its code is and which flows it sees."""

    name: str
    plugin: str  # as the config gives it
    source: str  # an absolute file path, or a module name
    attr: str  # the class in it
    is_file: bool
    chain: str
    slot: int  # runs just before STAGES[chain][slot] (len: after the last stage)
    all_routes: bool
    routes: frozenset[str]  # route names on the gateway, service names on a sidecar
    budget: float
    timeout: float
    options: Mapping[str, Any]
    file: str  # the config file, and where the block and its options sit in it (error messages)
    lines: Mapping[Path, int]

    def where(self, path: Path = ()) -> tuple[str, int, Path]:
        full = ("plugins", self.name, *path)
        probe = full
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return self.file, self.lines.get(probe, 1), full

    @property
    def stage(self) -> str:
        """How its position reads: `before forward`, `after securityheaders`."""
        stages = STAGES[self.chain]
        return f"before {stages[self.slot]}" if self.slot < len(stages) else f"after {stages[-1]}"


@dataclass(frozen=True, slots=True)
class PluginPlan:
    """Every plugin of one config, in declaration order (the order within one position)."""

    plugins: tuple[PluginSpec, ...] = ()

    def for_chain(self, *chains: str) -> tuple[PluginSpec, ...]:
        return tuple(p for p in self.plugins if p.chain in chains)


def slot_of(chain: str, after: str | None, before: str | None) -> int:
    stages = STAGES[chain]
    return stages.index(before) if before is not None else stages.index(after) + 1


def compile_plugins(config: MeshConfig, src: Source, base_dir: str) -> PluginPlan:
    """The plan of a validated config (references already checked by `references`)."""
    import os

    specs = []
    for name, p in config.plugins.items():
        target, _, attr = p.plugin.partition(":") if not p.plugin.endswith(".py") else (p.plugin, "", "")
        is_file = target.endswith(".py")
        source = os.path.normpath(os.path.join(base_dir, target)) if is_file else target
        if p.chain == GATEWAY:
            routes = frozenset(r.name for r in config.routes if name in r.plugins)
        else:
            routes = frozenset(s for s, svc in config.services.items() if name in svc.plugins)
        prefix = ("plugins", name)
        lines = {k: v for k, v in src.lines.items() if k[:2] == prefix}
        specs.append(PluginSpec(name, p.plugin, source, attr or "Plugin", is_file, p.chain,
                                slot_of(p.chain, p.after, p.before), p.all_routes, routes, p.budget,
                                p.timeout, dict(p.options), src.file, lines))
    return PluginPlan(tuple(specs))


def references(src: Source) -> list[Problem]:
    """Positions name a stage of the plugin's chain; routes and services name plugins of theirs."""
    data = src.data
    plugins = data.get("plugins") if isinstance(data.get("plugins"), dict) else {}
    out: list[Problem] = []
    chains: dict[str, str] = {}
    for name, block in plugins.items():
        if not isinstance(block, dict):
            continue
        chain = block.get("chain", GATEWAY)
        if chain not in STAGES:
            continue  # the schema reports it
        chains[name] = chain
        stages = STAGES[chain]
        for key in ("after", "before"):
            stage = block.get(key)
            if not isinstance(stage, str):
                continue
            if stage not in stages:
                out.append(src.problem(("plugins", name, key), f"unknown stage of the {chain} chain; "
                                       f"expected one of {', '.join(stages)} (got {show(stage)})"))
            elif (not block.get("all_routes") and slot_of(chain, block.get("after"), block.get("before"))
                  <= stages.index(ROUTING[chain])):
                out.append(src.problem(("plugins", name, key), f"runs before {ROUTING[chain]} picks the "
                                       f"route, so it can only apply to every route: add all_routes: true "
                                       f"or place it after {ROUTING[chain]} (got {key}: {stage})"))
    routes = data.get("routes") if isinstance(data.get("routes"), list) else []
    for i, route in enumerate(routes):
        if isinstance(route, dict):
            out.extend(_listed(src, ("routes", i, "plugins"), route.get("plugins"), chains, (GATEWAY,)))
    services = data.get("services") if isinstance(data.get("services"), dict) else {}
    for sname, svc in services.items():
        if isinstance(svc, dict):
            out.extend(_listed(src, ("services", sname, "plugins"), svc.get("plugins"), chains,
                               (SIDECAR_INBOUND, SIDECAR_OUTBOUND)))
    return out


def _listed(src: Source, where: Path, refs: Any, chains: dict[str, str],
            allowed: tuple[str, ...]) -> list[Problem]:
    out: list[Problem] = []
    for j, ref in enumerate(refs if isinstance(refs, list) else ()):
        if not isinstance(ref, str):
            continue
        if ref not in chains:
            known = f"expected one of {', '.join(chains)}" if chains else "no plugins are defined"
            out.append(src.problem(where + (j,), f"unknown plugin; {known} (got {show(ref)})"))
        elif chains[ref] not in allowed:
            fix = ("list it in services.NAME.plugins" if chains[ref] != GATEWAY
                   else "list it in routes[].plugins")
            out.append(src.problem(where + (j,), f"plugin {ref} runs in the {chains[ref]} chain: "
                                   f"{fix} (got {show(ref)})"))
    return out
