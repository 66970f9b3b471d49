"""IpFilter: a listener's downstream address allow and deny lists (CIDR); refused → JSON 403."""

from __future__ import annotations

import ipaddress

from mitmproxy import http

from mesh.core.compiled import PerSnapshot
from mesh.config.security import IpFilter as IpFilterConfig
from mesh.core.state import Snapshot

from . import keys, replies

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def compile_filters(snap: Snapshot) -> dict[str, tuple[Networks, Networks]]:
    """listener name → (allow, deny) networks."""
    def nets(blocks: list[str]) -> Networks:
        return tuple(ipaddress.ip_network(b) for b in blocks)
    out = {}
    for lst in snap.config.gateway.listeners:
        f: IpFilterConfig | None = lst.ip_filter
        if f is not None and (f.allow or f.deny):
            out[lst.name] = (nets(f.allow), nets(f.deny))
    return out


def allowed(ip: str, allow: Networks, deny: Networks) -> tuple[bool, str]:
    """Deny wins; a non-empty allow list admits only its blocks (as Kong's ip-restriction)."""
    try:
        addr = ipaddress.ip_address(ip.removeprefix("::ffff:") if "." in ip else ip)
    except ValueError:
        return False, f"unparsable client address {ip!r}"
    for net in deny:
        if addr.version == net.version and addr in net:
            return False, f"client address {ip} is in the deny list ({net})"
    if allow and not any(addr.version == n.version and addr in n for n in allow):
        return False, f"client address {ip} is not in the allow list"
    return True, ""


class IpFilter:
    def __init__(self):
        self._filters = PerSnapshot(compile_filters)

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st = keys.get(flow)
        if st is None or st.listener is None:
            return
        lists = self._filters.get(st.snapshot).get(st.listener.name)
        if lists is None:
            return
        ok, why = allowed(flow.client_conn.peername[0], *lists)
        if not ok:
            st.decide("ipfilter", why)
            replies.reply(flow, 403, "ip_denied", why)
