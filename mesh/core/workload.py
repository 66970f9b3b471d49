"""The workload a sidecar stands beside: which service instance, where its app is, where it listens.

Given per instance as one spec string (`mitmesh sidecar` flags, or `--set mesh_workload=...` under
mitmdump), parsed once by `parse_workload`, which raises ValueError naming the bad key.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.config.schema import MeshConfig
from mesh.config.types import check_address, check_name

KEYS = ("service", "version", "app", "address", "zone", "region", "weight", "instance", "inbound", "outbound",
        "admin", "capture")
CAPTURES = ("proxy", "transparent")


@dataclass(frozen=True, slots=True)
class Workload:
    service: str
    app: tuple[str, int]  # the local app, reachable only from here
    version: str = "v1"
    address: str = "127.0.0.1"  # this instance's address: its listeners and mDNS bind here
    zone: str | None = None
    weight: int = 1
    instance: str = ""
    inbound: int | None = None  # ports; None: the config's sidecar defaults
    outbound: int | None = None
    admin: int | None = None
    # proxy: the app sends its calls to the outbound listener as to an HTTP proxy; transparent: in a
    # pod, nftables redirects the app's connections to it (mitmproxy's transparent mode)
    capture: str = "proxy"
    region: str | None = None  # the locality above zone (Envoy's region), announced over etcd

    @property
    def name(self) -> str:
        return self.instance or f"{self.service}-{self.version}-{self.address}"

    def identity(self, config: MeshConfig) -> str:
        """The SPIFFE ID this instance claims: spiffe://<trust domain>/ns/<namespace>/sa/<service>."""
        return f"spiffe://{config.mesh.trust_domain}/ns/{config.mesh.namespace}/sa/{self.service}"

    def spec(self) -> str:
        parts = [f"service={self.service}", f"version={self.version}",
                 f"app={self.app[0]}:{self.app[1]}", f"address={self.address}", f"weight={self.weight}"]
        if self.capture != "proxy":
            parts.append(f"capture={self.capture}")
        for key in ("zone", "region", "instance", "inbound", "outbound", "admin"):
            value = getattr(self, key)
            if value:
                parts.append(f"{key}={value}")
        return ",".join(parts)


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535 (got {value!r})")
    return int(value)


def parse_workload(text: str) -> Workload:
    """`service=catalog,app=127.0.0.1:9101[,version=v1,address=127.0.0.3,zone=a,weight=3,...]`."""
    fields: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in KEYS:
            raise ValueError(f"workload: unknown key; expected one of {', '.join(KEYS)} (got {part!r})")
        if key in fields:
            raise ValueError(f"workload: {key} given twice (got {part!r})")
        try:
            if key in ("service", "version", "zone", "region", "instance"):
                fields[key] = check_name(value)
            elif key == "address":
                fields[key] = check_address(value)
            elif key == "app":
                host, colon, port = value.rpartition(":")
                if not colon:
                    raise ValueError(f"expected host:port such as 127.0.0.1:9101 (got {value!r})")
                try:
                    fields[key] = (check_address(host.strip("[]")), _port(port))
                except ValueError as e:
                    raise ValueError(f"expected host:port such as 127.0.0.1:9101; {e}") from None
            elif key == "capture":
                if value not in CAPTURES:
                    raise ValueError(f"expected one of {', '.join(CAPTURES)} (got {value!r})")
                fields[key] = value
            elif key == "weight":
                if not value.isdigit() or not 1 <= int(value) <= 10_000:
                    raise ValueError(f"expected an integer from 1 to 10000 (got {value!r})")
                fields[key] = int(value)
            else:
                fields[key] = _port(value)
        except ValueError as e:
            raise ValueError(f"workload: {key}: {e}") from None
    for key in ("service", "app"):
        if key not in fields:
            raise ValueError(f"workload: {key} is required (got {text!r})")
    return Workload(**fields)  # type: ignore[arg-type]
