"""Where the proxy goes: a native sidecar (an init container that keeps running, Kubernetes
1.29+ on the API server and every eligible kubelet) or a regular container."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import Notes
from webhook.dataplane.base import NativeDefault
from webhook.decide.scheduling import Eligibility
from webhook.policy import Policy
from webhook.reasons import Mode
from webhook.versions import KubeVersion, parse_kube_version


def native_placement(
    option: str, server: KubeVersion | None, elig: Eligibility, policy: Policy, ctx: Notes
) -> tuple[bool, str]:
    floor = policy.native_sidecar.min_version
    if option == "false":
        return False, "legacy placement requested by annotation"
    if option == "true":
        if server is not None and server < floor:
            ctx.warn(
                f"native sidecar requested but the cluster is {server} (< {floor}); legacy placement used"
            )
            return False, f"native sidecar requested but the cluster is {server}"
        return True, "native sidecar requested by annotation"
    if server is None:
        return False, "the API server version is unknown"
    if server < floor:
        return False, f"the cluster is {server}, below {floor}"
    if elig.count == 0:
        return False, "no eligible node is known, so kubelet versions are unknown"
    kubelets = [parse_kube_version(k) for k in elig.kubelets]
    if any(k is None for k in kubelets):
        return False, "an eligible node's kubelet version is unknown"
    lowest = min(k for k in kubelets if k is not None)
    if lowest < floor:
        return False, f"an eligible node's kubelet is {lowest}, below {floor}"
    return True, f"cluster {server} and every eligible kubelet (lowest {lowest}) are at least {floor}"


@dataclass(frozen=True, slots=True)
class Placement:
    native: bool
    why: str
    batch: bool

    @property
    def text(self) -> str:
        return "native sidecar" if self.native else "legacy sidecar"

    @property
    def batch_note(self) -> str:
        """What the decision adds for a pod that runs to completion beside a regular proxy."""
        legacy_batch = not self.native and self.batch
        return "; batch pod on legacy placement keeps running after the app exits" if legacy_batch else ""


def place(
    option: str,
    legacy_only: str | None,
    mode: Mode,
    server: KubeVersion | None,
    elig: Eligibility,
    policy: Policy,
    ctx: Notes,
    *,
    batch: bool,
    stop_hint: str,
) -> Placement:
    """Native or legacy sidecar for a pod: the mode may rule native out (``legacy_only``
    says why), else the annotation, the cluster's and the eligible kubelets' versions
    decide. ``stop_hint`` tells how the app stops the proxy (for a batch pod on legacy
    placement)."""
    if legacy_only is not None and option != "false":
        native, why = False, f"{mode.value} mode: {legacy_only}"
        if option == "true":
            ctx.warn(f"native sidecar requested, but {why}; legacy placement used")
    else:
        native, why = native_placement(option, server, elig, policy, ctx)
    placed = Placement(native, why, batch)
    ctx.lines.append(f"placement: {placed.text} ({why})")
    if not native and batch:
        ctx.warn(
            "this pod runs to completion but the proxy is a regular container (no native sidecars here), "
            "so it keeps the pod running after the app exits unless the app stops the proxy "
            f"({stop_hint})"
        )
    return placed


def mesh_native(
    default: NativeDefault, annotations: Mapping[str, str], node_name: object, snapshot: ClusterSnapshot
) -> tuple[bool, str]:
    """Where the control plane's own injector would place its proxy for this pod (native or
    not, and why): the pod's annotation where ``default`` names one, else always or never,
    else by kubelets: the pod's own node's where it names one, otherwise every node's
    (Istio's ``DetectNativeSidecar``; once per snapshot, over its node groups)."""
    for key, value, why in default.regular:
        if str(annotations.get(key, "")).strip() == value:
            return False, why
    asked = annotations.get(default.annotation) if default.annotation else None
    if asked in ("true", "false"):
        return asked == "true", f"{default.annotation}: {asked}"
    if default.on is not None:
        return default.on, default.why
    floor = parse_kube_version(default.min_kubelet)
    named = snapshot.nodes.get(node_name) if isinstance(node_name, str) else None
    if named is not None:
        below = _below(((named.name, named.kubelet),), floor)
    else:
        key = ("mesh-native", default.min_kubelet)
        cached = snapshot.memo.get(key)
        if not isinstance(cached, tuple):
            cached = (_below(((g.nodes[0].name, g.kubelet) for g in snapshot.groups), floor),)
            snapshot.memo.put(key, cached, 256)
        below = cached[0]
    if floor is None or below == ("", ""):
        return False, f"{default.why}; no node's kubelet is known"
    if below is not None:
        return False, f"{default.why}; node {below[0]}'s kubelet is {below[1] or 'unknown'}"
    return True, f"{default.why}; every node's kubelet is at least {floor}"


def _below(kubelets: Iterable[tuple[str, str | None]], floor: KubeVersion | None) -> tuple[str, str] | None:
    """The first node whose kubelet is below ``floor`` (or unknown), as (name, kubelet);
    ("", "") where there is no node; None where every one is at least ``floor``."""
    seen = False
    for name, kubelet in kubelets:
        seen = True
        version = parse_kube_version(kubelet or "")
        if floor is None or version is None or version < floor:
            return name, kubelet or ""
    return None if seen else ("", "")
