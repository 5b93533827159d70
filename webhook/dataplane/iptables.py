"""The redirect rules ``mesh-init`` loads with ``iptables-restore`` in iptables mode.

Inbound TCP is redirected to the proxy's inbound port, outbound TCP to its outbound port.
Never redirected: the proxy's own traffic (its UID, so it cannot loop), loopback traffic
inside the pod, the proxy's admin port (kubelet probes), the skip-ports the pod lists, and
the IPv4 ranges it excludes (IPv6 ranges need ip6tables, which this ruleset does not set).
"""

from __future__ import annotations

import functools
import re

PROXY_UID = 2102
INBOUND_PORT = 4143
OUTBOUND_PORT = 4140
ADMIN_PORT = 4191
PROXY_PORTS = (OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT)

_PORT_ITEM = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


class PortListError(ValueError):
    pass


# More separate ports and ranges than this are refused: each becomes a rule, or a piece of
# an init container's argument (Linux allows 128 KiB per argument).
MAX_PORT_RANGES = 256


def merge_ranges(ranges: object) -> tuple[tuple[int, int], ...]:
    """Sorted, with overlapping and adjacent ranges joined (the same ports, fewest items)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):  # type: ignore[call-overload]
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


# A port list this long or shorter is kept once parsed: the control plane's and the
# policy's lists, and the pods' annotations, recur from pod to pod.
_KEPT_LIST = 512


def parse_ports(raw: str) -> tuple[tuple[int, int], ...]:
    """``"25,3306,8000-8100"`` -> ``((25, 25), (3306, 3306), (8000, 8100))``; adjacent and
    overlapping items joined (``"1,2,3"`` -> ``((1, 3),)``)."""
    if len(raw) <= _KEPT_LIST:
        return _parsed(raw)
    return _parse(raw)


@functools.lru_cache(maxsize=1024)
def _parsed(raw: str) -> tuple[tuple[int, int], ...]:
    return _parse(raw)


def _parse(raw: str) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        m = _PORT_ITEM.match(item)
        if m is None:
            raise PortListError(f"{item!r} is not a port or a range like 8000-8100")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if not 1 <= lo <= hi <= 65535:
            raise PortListError(f"{item!r} is outside 1-65535 or reversed")
        out.append((lo, hi))
    merged = merge_ranges(out)
    if len(merged) > MAX_PORT_RANGES:
        raise PortListError(
            f"{len(merged)} separate ports and ranges, more than {MAX_PORT_RANGES} (each is a rule "
            "or part of an init container's argument); give ranges"
        )
    return merged


def _dport(lo: int, hi: int) -> str:
    return f"--dport {lo}" if lo == hi else f"--dport {lo}:{hi}"


def render_rules(
    *,
    skip_inbound: tuple[tuple[int, int], ...] = (),
    skip_outbound: tuple[tuple[int, int], ...] = (),
    skip_cidrs: tuple[str, ...] = (),
    skip_sources: tuple[str, ...] = (),
) -> str:
    """The ``nat`` rules ``mesh-init`` loads: inbound to the proxy's inbound port but the admin
    port, the skipped ports and connections from the skipped sources; outbound (but the
    proxy's own, loopback's and the skipped ports' and destinations') to its outbound port.
    IPv4 rules: IPv6 ranges are not written."""
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":MESH_INBOUND - [0:0]",
        ":MESH_OUTBOUND - [0:0]",
        "-A PREROUTING -p tcp -j MESH_INBOUND",
        f"-A MESH_INBOUND -p tcp --dport {ADMIN_PORT} -j RETURN",
    ]
    lines += [f"-A MESH_INBOUND -p tcp {_dport(lo, hi)} -j RETURN" for lo, hi in skip_inbound]
    lines += [f"-A MESH_INBOUND -s {cidr} -j RETURN" for cidr in skip_sources if ":" not in cidr]
    lines += [
        f"-A MESH_INBOUND -p tcp -j REDIRECT --to-ports {INBOUND_PORT}",
        "-A OUTPUT -p tcp -j MESH_OUTBOUND",
        f"-A MESH_OUTBOUND -m owner --uid-owner {PROXY_UID} -j RETURN",
        "-A MESH_OUTBOUND -o lo -j RETURN",
        "-A MESH_OUTBOUND -d 127.0.0.0/8 -j RETURN",
    ]
    lines += [f"-A MESH_OUTBOUND -p tcp {_dport(lo, hi)} -j RETURN" for lo, hi in skip_outbound]
    lines += [f"-A MESH_OUTBOUND -d {cidr} -j RETURN" for cidr in skip_cidrs if ":" not in cidr]
    lines += [f"-A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}", "COMMIT", ""]
    return "\n".join(lines)
