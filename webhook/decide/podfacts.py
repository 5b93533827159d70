"""What a pod, its namespace and the policy say before any node is looked at: the pod's
options (annotations), whether it opted in, whether its namespace is excluded, its
protocol, a port the proxy needs, and what the pod inherits from its namespace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import PREFIX, Notes
from webhook.dataplane import others
from webhook.dataplane.base import Ports
from webhook.dataplane.iptables import PortListError, merge_ranges, parse_ports
from webhook.policy import Policy
from webhook.reasons import Skip
from webhook.workload import protocol_from_container_ports, protocol_from_services

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

INJECT = PREFIX + "inject"
# the pod labels whose values the opt-in reads
LABELS_READ = (INJECT,)

ENUMS = {
    "interception": ("auto", "ebpf", "iptables", "microvm"),
    "iptables-fallback": ("true", "false"),
    "workload-protocol": ("grpc", "http", "tcp"),
    "throughput": ("high", "normal"),
    "native-sidecar": ("auto", "true", "false"),
}

DEFAULTS = {"interception": "auto", "iptables-fallback": "true", "native-sidecar": "auto"}


@dataclass(frozen=True, slots=True)
class Exclusions:
    """Traffic the pod wants left alone (ours and the other meshes' annotations, merged)."""

    inbound: Ports = ()
    outbound: Ports = ()
    cidrs: tuple[str, ...] = ()  # outbound destinations
    sources: tuple[str, ...] = ()  # inbound connections from these ranges


def str_map(value: object) -> Mapping[str, str]:
    return value if isinstance(value, dict) else {}


def pod_option(annotations: Mapping[str, Any], name: str, ctx: Notes) -> str | None:
    raw = annotations.get(PREFIX + name)
    if raw is None:
        return DEFAULTS.get(name)
    value = str(raw).strip().lower()
    if value not in ENUMS[name]:
        ctx.warn(
            f"annotation {PREFIX}{name}: {raw!r} is not one of {', '.join(ENUMS[name])}; "
            f"using {DEFAULTS.get(name, 'detection')}"
        )
        return DEFAULTS.get(name)
    return value


def opt_in(
    labels: Mapping[str, Any],
    annotations: Mapping[str, Any],
    ns_labels: Mapping[str, str],
    policy: Policy,
    assume_opt_in: bool,
) -> tuple[bool, Skip | None, str]:
    """(opted in, skip reason when not, where the answer came from)."""
    for where, source in (("pod label", labels), ("pod annotation", annotations)):
        value = source.get(INJECT)
        if value == "disabled":
            return False, Skip.POD_DISABLED, where
        if value == "enabled":
            return True, None, where
    if policy.other_meshes.respect_opt_outs:
        foreign = others.opt_out(labels, annotations)
        if foreign is not None:
            return (
                False,
                Skip.OTHER_MESH_OPT_OUT,
                f"{foreign}: another mesh's opt-out, honoured by the policy",
            )
    if assume_opt_in:
        return True, None, "a dry run: manifests are opted in unless they say disabled"
    ns_value = ns_labels.get(INJECT)
    if ns_value == "enabled":
        return True, None, "namespace label"
    if ns_value == "disabled":
        return False, Skip.NAMESPACE_DISABLED, "namespace label"
    if policy.inject_by_default:
        return True, None, "policy injectByDefault"
    return False, Skip.NOT_OPTED_IN, "nothing opted in"


def invalid(spec: Mapping[str, Any]) -> str | None:
    """What makes the pod one the API server will refuse (mutating webhooks run before its
    validation), where that would break what we read or add; None for a pod we can mesh."""
    names: set[str] = set()
    for key in ("containers", "initContainers"):
        items = spec.get(key)
        if items is None and key == "initContainers":
            continue
        if not isinstance(items, list) or (key == "containers" and not items):
            return f"spec.{key} is {'missing' if items is None else 'empty' if items == [] else 'not a list'}"
        problem = _unnamed_or_twice(items, f"spec.{key}", "containers", names)
        if problem is not None:
            return problem
    volumes = spec.get("volumes")
    if volumes is None:
        return None
    if not isinstance(volumes, list):
        return "spec.volumes is not a list"
    return _unnamed_or_twice(volumes, "spec.volumes", "volumes", set())


def _unnamed_or_twice(items: list[Any], where: str, what: str, names: set[str]) -> str | None:
    """The first item without a name, or whose name is already in ``names`` (which grows)."""
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            return f"{where}[{i}] has no name"
        if name in names:
            return f"two {what} are named {name}"
        names.add(name)
    return None


def excluded(namespace: str, policy: Policy) -> Skip | None:
    if namespace in SYSTEM_NAMESPACES:
        return Skip.SYSTEM_NAMESPACE
    if namespace == policy.injector_namespace:
        return Skip.OWN_NAMESPACE
    if namespace in policy.excluded_namespaces:
        return Skip.POLICY_NAMESPACE
    return None


def proxy_port_used(spec: Mapping[str, Any], ports: tuple[int, ...]) -> int | None:
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            declared = c.get("ports") if isinstance(c, dict) else None
            for p in declared if isinstance(declared, list) else ():
                if isinstance(p, dict) and p.get("containerPort") in ports:
                    return int(p["containerPort"])
    return None


def pod_exclusions(annotations: Mapping[str, Any], policy: Policy, ctx: Notes) -> Exclusions:
    """The traffic the pod wants left alone: our skip-port annotations, and (unless the
    policy says not to) Istio's and Linkerd's exclusion annotations, merged."""
    skips: list[tuple[tuple[int, int], ...]] = [(), ()]
    for i, name in enumerate(("skip-inbound-ports", "skip-outbound-ports")):
        try:
            skips[i] = parse_ports(str(annotations.get(PREFIX + name, "")))
        except PortListError as exc:
            ctx.warn(f"annotation {PREFIX}{name}: {exc}; no ports skipped")
    cidrs: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    if policy.other_meshes.translate_exclusions:
        found = others.exclusions(annotations)
        for problem in found.problems:
            ctx.warn(problem)
        if found.used:
            skips = [merge_ranges((*skips[0], *found.inbound)), merge_ranges((*skips[1], *found.outbound))]
            cidrs, sources = found.cidrs, found.sources
            ctx.lines.append(f"exclusions: translated {', '.join(found.used)}")
    return Exclusions(inbound=skips[0], outbound=skips[1], cidrs=cidrs, sources=sources)


def inherit(
    pod: dict[str, Any], namespace: Mapping[str, str] | None, prefixes: tuple[str, ...]
) -> tuple[str, ...]:
    """Put on ``pod`` (whose metadata is its own copy) the namespace's annotations under
    ``prefixes`` that the pod has no value of its own for, as Linkerd's injector copies its
    config annotations; their names."""
    if not prefixes or not namespace:
        return ()
    meta = pod["metadata"]
    own = meta.get("annotations")
    if own is not None and not isinstance(own, dict):
        return ()
    found = {k: v for k, v in namespace.items() if k.startswith(prefixes) and k not in (own or {})}
    if not found:
        return ()
    meta["annotations"] = {**(own or {}), **found}
    return tuple(sorted(found))


def protocol_of(
    pod: Mapping[str, Any],
    annotations: Mapping[str, Any],
    snapshot: ClusterSnapshot,
    namespace: str,
    ctx: Notes,
) -> tuple[str, str]:
    explicit = pod_option(annotations, "workload-protocol", ctx)
    if explicit is not None:
        return explicit, "annotation"
    labels = str_map((pod.get("metadata") or {}).get("labels"))
    found = protocol_from_services(snapshot.services.get(namespace, ()), labels)
    if found is not None:
        return found[0], f"Service {found[1]}"
    spec = pod.get("spec") or {}
    by_ports = protocol_from_container_ports(spec.get("containers") or [])
    if by_ports is not None:
        return by_ports, "container port names"
    return "tcp", "no Service or port name says otherwise"
