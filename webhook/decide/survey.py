"""What a pod's mode, placement and size are decided on: the nodes it may run on and
their kernels, the cluster's version, what its workload is like and the Pod Security
levels of its namespace, each said in the explanation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import Notes
from webhook.decide.explain import kernel_line, nodes_line, pod_security_line, redirector_line
from webhook.decide.nodefacts import KernelFacts, kernel_facts
from webhook.decide.scheduling import Eligibility, eligible_nodes, nodes_spec
from webhook.decide.traits import WorkloadTraits, workload_traits
from webhook.podsecurity.levels import Levels, namespace_levels
from webhook.policy import Policy
from webhook.versions import KubeVersion
from webhook.workload import WorkloadKey


@dataclass(frozen=True, slots=True)
class Survey:
    elig: Eligibility  # the nodes the pod may be scheduled on
    kernels: KernelFacts
    server: KubeVersion | None  # the API server's version, where known
    traits: WorkloadTraits
    levels: Levels  # the namespace's Pod Security levels


def survey(
    pod: Mapping[str, Any],
    annotations: Mapping[str, str],
    ns_labels: Mapping[str, str],
    namespace: str,
    workload: WorkloadKey,
    snapshot: ClusterSnapshot,
    policy: Policy,
    ctx: Notes,
) -> Survey:
    server = snapshot.server_version
    elig = eligible_nodes(snapshot, nodes_spec(pod["spec"], snapshot))
    kernels = kernel_facts(elig, policy.interception)
    ctx.lines.extend(_nodes_said(elig, kernels, snapshot, policy))
    ctx.lines.append(f"cluster: {server if server else 'version unknown'} ({snapshot.source})")
    traits = workload_traits(pod, annotations, snapshot, namespace, workload, policy, ctx)
    levels = namespace_levels(ns_labels, policy.pod_security.default_level)
    ctx.lines.append(pod_security_line(levels))
    return Survey(elig, kernels, server, traits, levels)


def _nodes_said(
    elig: Eligibility, kernels: KernelFacts, snapshot: ClusterSnapshot, policy: Policy
) -> tuple[str, ...]:
    """The explanation's lines of the eligible nodes, their kernels and their redirector:
    made once per Eligibility (one per set of scheduling constraints on a snapshot) and what
    of the policy they say, and kept with it."""
    where = (policy.redirector_namespace, policy.interception.ebpf.redirector.selector)
    key = ("said", kernels, where, bool(snapshot.redirectors))
    found = elig.derived.get(key)
    if not isinstance(found, tuple):
        found = elig.derived[key] = (
            nodes_line(elig),
            kernel_line(elig, kernels),
            redirector_line(elig, snapshot, policy),
        )
    return found
