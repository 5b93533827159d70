"""Istio's and Linkerd's own marks on a pod: that it is already meshed, that it opted out,
and which traffic it wants left alone.

A pod another mesh already owns (its proxy or init container, or the annotation its
injector writes) never gets our proxy: two proxies would fight over the same traffic.
Their opt-outs count as the pod's own (``otherMeshes.respectOptOuts`` in the policy), and
their exclusion annotations are translated into ours, so a workload moving to us keeps the
exclusions it relies on (databases, SMTP, the metadata server), each as what it means:
Linkerd's ``config.linkerd.io/skip-subnets`` is proxy-init's ``--subnets-to-ignore``, which
leaves inbound connections *from* those ranges alone (a rule on the source in its inbound
chain), never outbound destinations; Istio's ``excludeOutboundIPRanges`` are destinations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.dataplane.iptables import PortListError, merge_ranges, parse_ports

# mesh -> (its containers, the annotations its injector writes)
OWNED_BY = {
    "Istio": (("istio-proxy", "istio-init", "istio-validation"), ("sidecar.istio.io/status",)),
    "Linkerd": (
        ("linkerd-proxy", "linkerd-init", "linkerd-network-validator"),
        ("linkerd.io/proxy-version",),
    ),
}
# (where, key, value that opts out, mesh)
OPT_OUTS = (
    ("label", "sidecar.istio.io/inject", "false", "Istio"),
    ("annotation", "sidecar.istio.io/inject", "false", "Istio"),
    ("annotation", "linkerd.io/inject", "disabled", "Linkerd"),
)
# annotation -> which of ours it adds to: inbound or outbound ports, outbound destinations
# ("cidrs"), or inbound sources
EXCLUSIONS = {
    "traffic.sidecar.istio.io/excludeInboundPorts": "inbound",
    "traffic.sidecar.istio.io/excludeOutboundPorts": "outbound",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges": "cidrs",
    "config.linkerd.io/skip-inbound-ports": "inbound",
    "config.linkerd.io/skip-outbound-ports": "outbound",
    "config.linkerd.io/skip-subnets": "sources",
}
LABELS_READ = ("sidecar.istio.io/inject",)


def _names(spec: Mapping[str, Any], key: str) -> list[str]:
    items = spec.get(key)
    return [c.get("name") for c in items if isinstance(c, dict)] if isinstance(items, list) else []


def owner(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(the mesh that already owns the pod, the evidence) or None. Call on a pod whose own
    injection by us has been stripped: what is left is someone else's."""
    spec = pod.get("spec") or {}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    present = set(_names(spec, "containers")) | set(_names(spec, "initContainers"))
    for mesh, (containers, marks) in OWNED_BY.items():
        for name in containers:
            if name in present:
                return mesh, f"{name} container"
        for mark in marks:
            if isinstance(annotations, dict) and mark in annotations:
                return mesh, f"{mark} annotation"
    return None


def opt_out(labels: Mapping[str, Any], annotations: Mapping[str, Any]) -> str | None:
    """The other mesh's opt-out the pod carries, as ``key: value`` with where it is."""
    for where, key, value, _mesh in OPT_OUTS:
        source = labels if where == "label" else annotations
        if str(source.get(key, "")).strip().lower() == value:
            return f'{where} {key}: "{value}"'
    return None


@dataclass(frozen=True, slots=True)
class Exclusions:
    inbound: tuple[tuple[int, int], ...] = ()
    outbound: tuple[tuple[int, int], ...] = ()
    cidrs: tuple[str, ...] = ()  # outbound destinations
    sources: tuple[str, ...] = ()  # inbound connections from these ranges
    used: tuple[str, ...] = ()  # the annotations that were translated
    problems: tuple[str, ...] = field(default=())


_NONE = Exclusions()
_EXCLUSION_KEYS = frozenset(EXCLUSIONS)


def exclusions(annotations: Mapping[str, Any]) -> Exclusions:
    if _EXCLUSION_KEYS.isdisjoint(annotations):  # most pods: none of them
        return _NONE
    ports: dict[str, list[tuple[int, int]]] = {"inbound": [], "outbound": []}
    ranges: dict[str, list[str]] = {"cidrs": [], "sources": []}
    used: list[str] = []
    problems: list[str] = []
    for key, kind in EXCLUSIONS.items():
        raw = annotations.get(key)
        if raw is None:
            continue
        text = str(raw).strip()
        if kind in ranges:
            try:
                nets = [
                    str(ipaddress.ip_network(p.strip(), strict=False)) for p in text.split(",") if p.strip()
                ]
            except ValueError as exc:
                problems.append(f"annotation {key}: {exc}; ignored")
                continue
            ranges[kind] += nets
        else:
            try:
                ports[kind] += parse_ports(text)
            except PortListError as exc:
                problems.append(f"annotation {key}: {exc}; ignored")
                continue
        used.append(key)
    return Exclusions(
        inbound=merge_ranges(ports["inbound"]),
        outbound=merge_ranges(ports["outbound"]),
        cidrs=tuple(dict.fromkeys(ranges["cidrs"])),
        sources=tuple(dict.fromkeys(ranges["sources"])),
        used=tuple(used),
        problems=tuple(problems),
    )
