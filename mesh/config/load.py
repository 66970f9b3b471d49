"""Loads and validates mesh.yaml: every problem is reported with file, line and key path."""

from __future__ import annotations

import types
import typing
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from mesh.config.schema import MeshConfig
from mesh.config.source import ConfigError, Path, Problem, Source, parse, show

_GENERIC = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}


def load(path: str | FsPath) -> MeshConfig:
    """Read, parse and validate a config file; raises ConfigError listing every problem."""
    path = FsPath(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([Problem(str(path), 1, (), f"cannot read file: {e.strerror}")]) from None
    return load_text(text, str(path))


def load_text(text: str, file: str) -> MeshConfig:
    src = parse(text, file)
    if not isinstance(src.data, dict):
        raise ConfigError([src.problem((), f"expected a mapping at the top level (got {show(src.data)})")])
    problems: list[Problem] = []
    config = None
    try:
        config = MeshConfig.model_validate(src.data)
    except ValidationError as e:
        problems.extend(_translate(src, err) for err in e.errors())
    problems.extend(_references(src))
    if config is not None and not problems:
        problems.extend(_stripped_headers(src, config))
    if problems:
        raise ConfigError(_dedupe(problems))
    assert config is not None
    return config


def load_block(text: str, model: type[BaseModel], name: str) -> Any:
    """One block of mesh.yaml given on its own, e.g. as the mitmdump option `mesh_rate_limit`:
    the same checks and messages, with `name` where a file would be named."""
    src = parse(text, name)
    try:
        return model.model_validate(src.data)
    except ValidationError as e:
        raise ConfigError(_dedupe([_translate(src, err, model) for err in e.errors()])) from None


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# pydantic errors → one error shape


def _translate(src: Source, err: dict[str, Any], root: type[BaseModel] = MeshConfig) -> Problem:
    loc: list[str | int] = list(err["loc"])
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc = loc[:-1]
    path: Path = tuple(loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1], root)
        expected = f"; expected one of {', '.join(allowed)}" if allowed else ""
        return src.problem(path, f"unknown key{expected} (got {show(path[-1])})")
    if kind == "missing":
        return src.problem(path, "required key is missing")
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", err["msg"]))
    elif kind == "literal_error":
        message = f"expected one of {ctx['expected'].replace(' or ', ', ')} (got {show(value)})"
    elif kind in _GENERIC:
        message = f"{_GENERIC[kind]} (got {show(value)})"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        bound = f"{bound:g}" if isinstance(bound, (int, float)) else bound
        message = f"expected a value {op} {bound} (got {show(value)})"
    elif kind == "too_short":
        message = f"expected at least {ctx.get('min_length')} item(s) (got {show(value)})"
    elif kind == "too_long":
        message = f"expected at most {ctx.get('max_length')} item(s)"
    else:
        message = f"{err['msg'][0].lower()}{err['msg'][1:]} (got {show(value)})"
    if is_key:
        message = f"key {show(path[-1])}: {message}"
    return src.problem(path, message)


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional to reach the model, list or dict type inside."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp


def _allowed_keys(path: Path, root: type[BaseModel] = MeshConfig) -> list[str]:
    tp: Any = root
    for part in path:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return []
            tp = field.annotation
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


# ---------------------------------------------------------------------------------------------
# references between sections, checked on the raw data so they are reported beside schema errors


def _references(src: Source) -> list[Problem]:
    data = src.data
    out: list[Problem] = []
    services = data.get("services") if isinstance(data.get("services"), dict) else {}
    policies = data.get("policies") if isinstance(data.get("policies"), dict) else {}
    routes = data.get("routes") if isinstance(data.get("routes"), list) else []

    names: dict[str, int] = {}
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        name = route.get("name")
        if isinstance(name, str):
            if name in names:
                out.append(src.problem(("routes", i, "name"), f"duplicate route name (first at routes[{names[name]}]) (got {show(name)})"))
            names.setdefault(name, i)
        fwd = route.get("forward")
        if isinstance(fwd, dict) and isinstance(fwd.get("service"), str):
            svc_name = fwd["service"]
            service = services.get(svc_name)
            if service is None:
                known = f"expected one of {', '.join(services)}" if services else "no services are defined"
                out.append(src.problem(("routes", i, "forward", "service"), f"unknown service; {known} (got {show(svc_name)})"))
            elif isinstance(service, dict) and isinstance(service.get("versions"), dict):
                versions = service["versions"]
                known = ", ".join(versions)
                if isinstance(fwd.get("version"), str) and fwd["version"] not in versions:
                    out.append(src.problem(("routes", i, "forward", "version"),
                                           f"unknown version of {svc_name}; expected one of {known} (got {show(fwd['version'])})"))
                if isinstance(fwd.get("weights"), dict):
                    for v in fwd["weights"]:
                        if v not in versions:
                            out.append(src.problem(("routes", i, "forward", "weights", v),
                                                   f"unknown version of {svc_name}; expected one of {known} (got {show(v)})"))
        refs = route.get("policies")
        if isinstance(refs, list):
            for j, ref in enumerate(refs):
                if isinstance(ref, str) and ref not in policies:
                    known = f"expected one of {', '.join(policies)}" if policies else "no policies are defined"
                    out.append(src.problem(("routes", i, "policies", j), f"unknown policy; {known} (got {show(ref)})"))
            kinds: dict[str, str] = {}
            for j, ref in enumerate(refs):
                block = policies.get(ref) if isinstance(ref, str) else None
                for kind in block if isinstance(block, dict) else ():
                    if kind in kinds and kinds[kind] != ref:
                        out.append(src.problem(("routes", i, "policies", j),
                                               f"policy {show(ref)} sets {kind}, already set by {show(kinds[kind])}"))
                    kinds.setdefault(kind, ref)

    out.extend(_policy_references(src, services, policies, routes))
    for sname, svc in services.items():  # services.X.policies: known names
        refs = svc.get("policies") if isinstance(svc, dict) else None
        for j, ref in enumerate(refs if isinstance(refs, list) else ()):
            if isinstance(ref, str) and ref not in policies:
                known = f"expected one of {', '.join(policies)}" if policies else "no policies are defined"
                out.append(src.problem(("services", sname, "policies", j), f"unknown policy; {known} (got {show(ref)})"))

    gateway = data.get("gateway")
    out.extend(_default_policies(src, gateway, policies))
    listeners = gateway.get("listeners") if isinstance(gateway, dict) else None
    if isinstance(listeners, list):
        seen_names: dict[str, int] = {}
        seen_ports: dict[tuple, int] = {}
        for i, lst in enumerate(listeners):
            if not isinstance(lst, dict):
                continue
            if isinstance(lst.get("name"), str):
                if lst["name"] in seen_names:
                    out.append(src.problem(("gateway", "listeners", i, "name"),
                                           f"duplicate listener name (first at listeners[{seen_names[lst['name']]}]) (got {show(lst['name'])})"))
                seen_names.setdefault(lst["name"], i)
            if isinstance(lst.get("port"), int):
                key = (lst.get("address", "127.0.0.1"), lst["port"])
                if key in seen_ports:
                    out.append(src.problem(("gateway", "listeners", i, "port"),
                                           f"port already used by listeners[{seen_ports[key]}] (got {lst['port']})"))
                seen_ports.setdefault(key, i)
    return out


def _default_policies(src: Source, gateway: Any, policies: dict) -> list[Problem]:
    """gateway.policies: known names, each kind set by one block only."""
    refs = gateway.get("policies") if isinstance(gateway, dict) else None
    if not isinstance(refs, list):
        return []
    out: list[Problem] = []
    kinds: dict[str, str] = {}
    for j, ref in enumerate(refs):
        if not isinstance(ref, str):
            continue
        if ref not in policies:
            known = f"expected one of {', '.join(policies)}" if policies else "no policies are defined"
            out.append(src.problem(("gateway", "policies", j), f"unknown policy; {known} (got {show(ref)})"))
            continue
        block = policies[ref]
        for kind in block if isinstance(block, dict) else ():
            if kind in kinds and kinds[kind] != ref:
                out.append(src.problem(("gateway", "policies", j),
                                       f"policy {show(ref)} sets {kind}, already set by {show(kinds[kind])}"))
            kinds.setdefault(kind, ref)
    return out


def _cluster_problem(services: dict, svc: Any, version: Any, where: str = "") -> tuple[str, str] | None:
    """(key, message) when svc/version names no cluster; None when it does or cannot be checked."""
    if not isinstance(svc, str):
        return None
    service = services.get(svc)
    if service is None:
        known = f"expected one of {', '.join(services)}" if services else "no services are defined"
        return "service", f"unknown service{where}; {known} (got {show(svc)})"
    versions = service.get("versions") if isinstance(service, dict) else None
    if isinstance(version, str) and isinstance(versions, dict) and version not in versions:
        return "version", (f"unknown version of {svc}{where}; expected one of {', '.join(versions)} "
                           f"(got {show(version)})")
    return None


def _policy_references(src: Source, services: dict, policies: dict, routes: list) -> list[Problem]:
    """Clusters named by mirror and versioning policies must exist (versioning: for every route using it)."""
    out: list[Problem] = []
    for name, block in policies.items():
        mirror = block.get("mirror") if isinstance(block, dict) else None
        if isinstance(mirror, dict):
            found = _cluster_problem(services, mirror.get("service"), mirror.get("version"))
            if found:
                out.append(src.problem(("policies", name, "mirror", found[0]), found[1]))
        versioning = block.get("versioning") if isinstance(block, dict) else None
        versions = versioning.get("versions") if isinstance(versioning, dict) else None
        if isinstance(versions, dict) and versions:
            known = ", ".join(map(str, versions))
            where = ("policies", name, "versioning")
            default = versioning.get("default")
            if isinstance(default, str) and default not in versions:
                out.append(src.problem(where + ("default",), f"unknown version; expected one of {known} "
                                                             f"(got {show(default)})"))
            for vname, v in versions.items():
                succ = v.get("successor") if isinstance(v, dict) else None
                if isinstance(succ, str) and succ not in versions:
                    out.append(src.problem(where + ("versions", vname, "successor"),
                                           f"unknown version; expected one of {known} (got {show(succ)})"))
    for i, route in enumerate(routes):
        if not isinstance(route, dict) or not isinstance(route.get("policies"), list):
            continue
        fwd = route.get("forward")
        route_service = fwd.get("service") if isinstance(fwd, dict) else None
        for ref in route["policies"]:
            block = policies.get(ref) if isinstance(ref, str) else None
            versioning = block.get("versioning") if isinstance(block, dict) else None
            versions = versioning.get("versions") if isinstance(versioning, dict) else None
            if not isinstance(versions, dict):
                continue
            for vname, v in versions.items():
                v = v if isinstance(v, dict) else {}
                svc = v.get("service", route_service)
                path = ("policies", ref, "versioning", "versions", vname)
                if svc is None:
                    out.append(src.problem(path, f"needs service: route {show(route.get('name'))} does not "
                                                 f"forward to a service (got {show(vname)})"))
                    continue
                found = _cluster_problem(services, svc, v.get("version", vname),
                                         f" (for route {show(route.get('name'))})")
                if found:
                    key = found[0] if found[0] in v else None
                    out.append(src.problem(path + ((key,) if key else ()), found[1]))
    return out


# ---------------------------------------------------------------------------------------------
# checks on the validated model: what each route reads, against what the gateway strips

AUTHN_KINDS = ("jwt", "oauth2", "api_key")  # the policy kinds that set headers from verified claims


def _stripped_headers(src: Source, config: MeshConfig) -> list[Problem]:
    """The gateway's Sanitize removes every forward_claims header from each request before routing
    (only a verified token or key may set one). A header that a route matches on, or that balancing,
    a sticky split or a rate limit reads, is then never seen, unless that route's own authentication
    sets it again from claims (after matching: so never for a match). Each such read is an error."""
    setters: dict[str, list[str]] = {}
    for pname, policy in config.policies.items():
        for kind in AUTHN_KINDS:
            block = getattr(policy, kind)
            for header in (block.forward_claims.values() if block is not None else ()):
                setters.setdefault(header.lower(), []).append(f"policies.{pname}.{kind}.forward_claims")
    if not setters:
        return []
    found: dict[tuple, list[str]] = {}  # (key path, header, what reads it) → routes that never see it
    for i, route in enumerate(config.routes):
        refs = (*route.policies, *config.gateway.policies)
        kinds: dict[str, Any] = {}  # the first block naming a kind wins, as the route compiler does
        for ref in refs:
            for kind in (*AUTHN_KINDS, "rate_limit"):
                if getattr(config.policies[ref], kind) is not None:
                    kinds.setdefault(kind, getattr(config.policies[ref], kind))
        set_here = {h.lower() for k in AUTHN_KINDS if k in kinds for h in kinds[k].forward_claims.values()}
        reads = [(("routes", i, "match", "headers", name), name, "matches on", False)
                 for name in route.match.headers]
        fwd = route.forward
        if fwd is not None:
            lb = config.services[fwd.service].lb
            if lb.hash_on is not None and lb.hash_on.header:
                reads.append((("services", fwd.service, "lb", "hash_on", "header"), lb.hash_on.header,
                              "hashes on", True))
            if fwd.sticky is not None and fwd.sticky.header:
                reads.append((("routes", i, "forward", "sticky", "header"), fwd.sticky.header,
                              "splits by", True))
        limit = kinds.get("rate_limit")
        if limit is not None and limit.key == "header" and limit.header:
            reads.append((("policies", next(r for r in refs if config.policies[r].rate_limit is limit),
                           "rate_limit", "header"), limit.header, "counts by", True))
        for path, header, what, after_authn in reads:
            if header.lower() in setters and not (after_authn and header.lower() in set_here):
                found.setdefault((path, header, what), []).append(route.name)
    out = []
    for (path, header, what), routes in found.items():
        which = f"route {routes[0]}" if len(routes) == 1 else f"routes {', '.join(routes)}"
        out.append(src.problem(path, (
            f"the gateway removes {header} from every request ({' and '.join(setters[header.lower()])} "
            f"set{'s' if len(setters[header.lower()]) == 1 else ''} it from verified claims), so "
            f"{which} never {what} it; use another header, or a "
            f"policy on the route that sets it (got {show(header)})")))
    return out
