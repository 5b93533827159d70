"""The proxy's CPU and memory for one pod: a VerticalPodAutoscaler's where one sizes the
proxy (``decide/autoscaler.py``); else observed usage when there is enough of it, else the
policy's profile, then the pod's own annotations (ours, or the flavour's own)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import PREFIX, Notes, ProxyResources
from webhook.dataplane import flavour
from webhook.decide.autoscaler import autoscaler_for, kept_resources, sizes_proxy
from webhook.decide.sizing import (
    annotation_overrides,
    apply_overrides,
    enough_samples,
    from_observed,
    from_profile,
)
from webhook.decide.traits import WorkloadTraits
from webhook.policy import Policy
from webhook.reasons import ResourceSource
from webhook.workload import WorkloadKey


def proxy_resources(
    annotations: Mapping[str, Any],
    key: WorkloadKey,
    snapshot: ClusterSnapshot,
    policy: Policy,
    traits: WorkloadTraits,
    ctx: Notes,
    *,
    native: bool,
    received: Mapping[str, Any],
) -> ProxyResources:
    """The proxy's requests and limits, said in the explanation. ``received``: the pod as
    the API server sent it (where a VPA already sized the proxy)."""
    merged = _with_flavour_overrides(annotations, policy)
    resources = _by_autoscaler(merged, annotations, key, snapshot, policy, ctx, native, received)
    if resources is None:
        resources = _by_usage_or_profile(merged, key, snapshot, policy, traits, ctx)
    ctx.lines.append(f"resources: {resources.detail} -> {resources.brief()}")
    if resources.source is not ResourceSource.OBSERVED and traits.usage is None and snapshot.usage:
        ctx.lines.append(f"usage: no samples recorded for {key}")
    return resources


def _by_autoscaler(
    merged: Mapping[str, Any],
    annotations: Mapping[str, Any],
    key: WorkloadKey,
    snapshot: ClusterSnapshot,
    policy: Policy,
    ctx: Notes,
    native: bool,
    received: Mapping[str, Any],
) -> ProxyResources | None:
    """VPA's sizes, kept as the pod has them, where a VerticalPodAutoscaler sizes the proxy
    (and the pod's own resource annotations do not win); else None."""
    vpa = autoscaler_for(snapshot, key)
    if vpa is None:
        return None
    proxy = flavour(policy.proxy.flavour).proxy_name
    sized, why = sizes_proxy(vpa, proxy, native, annotations)
    ctx.lines.append(f"vpa: {why}")
    asked = [name for name in merged if name.startswith(PREFIX + "proxy-")]
    if not sized or (asked and policy.sizing.vertical_pod_autoscaler.annotations_win):
        return None
    for name in asked:
        ctx.warn(f"annotation {name} is not used: VPA {vpa.name} sizes the proxy")
    return ProxyResources(
        cpu_request=0.0,
        memory_request=0,
        cpu_limit=None,
        memory_limit=None,
        source=ResourceSource.VPA,
        detail=f"sized by VPA {vpa.name}",
        kept=kept_resources(received, proxy),
        by=vpa.name,
    )


def _by_usage_or_profile(
    merged: Mapping[str, Any],
    key: WorkloadKey,
    snapshot: ClusterSnapshot,
    policy: Policy,
    traits: WorkloadTraits,
    ctx: Notes,
) -> ProxyResources:
    """Observed usage where there is enough of it, else the policy's profile; then the pod's
    resource annotations over it."""
    protocol, throughput, lifecycle = traits.protocol, traits.throughput, traits.lifecycle
    summary = snapshot.usage.get(key)
    if enough_samples(summary, policy):
        assert summary is not None
        base = from_observed(summary, policy)
    else:
        profile = policy.profile_for(protocol, throughput, lifecycle)
        why = (
            "no observed usage"
            if summary is None
            else f"only {summary.count} samples over {summary.span / 3600:.1f}h "
            f"(need {policy.sizing.min_samples} over {policy.sizing.min_span / 3600:g}h)"
        )
        base = from_profile(
            (profile.requests, profile.limits), profile.name, f"{protocol}/{throughput}/{lifecycle}; {why}"
        )
    overrides, problems = annotation_overrides(merged)
    for problem in problems:
        ctx.warn(problem)
    return apply_overrides(base, overrides)


def _with_flavour_overrides(annotations: Mapping[str, Any], policy: Policy) -> Mapping[str, Any]:
    """The flavour's own proxy resource annotations (``config.linkerd.io/proxy-cpu-request``,
    ``sidecar.istio.io/proxyCPU`` ...) count as ours; ours win where both are given."""
    names = flavour(policy.proxy.flavour).resource_annotations
    if not any(name in annotations for name in names):
        return annotations
    merged = dict(annotations)
    for name, suffix in names.items():
        if name in annotations:
            merged.setdefault(PREFIX + suffix, annotations[name])
    return merged
