"""What the pod's workload is like, for the mode and the sizing: its protocol, its
throughput (annotated, else classified from its observed CPU against the policy's
threshold) and its lifecycle (a Job's pod runs to completion)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import Notes, cpu_str
from webhook.decide.podfacts import pod_option, protocol_of
from webhook.decide.sizing import enough_samples
from webhook.policy import Policy
from webhook.usage.samples import UsageSummary
from webhook.workload import WorkloadKey, is_batch


@dataclass(frozen=True, slots=True)
class WorkloadTraits:
    protocol: str  # http, grpc, tcp ... (annotation, the Service's appProtocol, else the policy's)
    throughput: str  # "high" or "normal"
    lifecycle: str  # "batch" (runs to completion) or "service"
    usage: UsageSummary | None  # the workload's observed proxy usage, where any is recorded

    @property
    def batch(self) -> bool:
        return self.lifecycle == "batch"


def workload_traits(
    pod: Mapping[str, Any],
    annotations: Mapping[str, str],
    snapshot: ClusterSnapshot,
    namespace: str,
    key: WorkloadKey,
    policy: Policy,
    ctx: Notes,
) -> WorkloadTraits:
    protocol, proto_source = protocol_of(pod, annotations, snapshot, namespace, ctx)
    summary = snapshot.usage.get(key)
    throughput = pod_option(annotations, "throughput", ctx)
    if throughput is not None:
        tp_source = "annotation"
    elif enough_samples(summary, policy) and summary is not None:
        high = summary.cpu_p >= policy.interception.high_throughput_cpu
        throughput = "high" if high else "normal"
        tp_source = (
            f"observed cpu p{policy.sizing.cpu_percentile:g} {cpu_str(summary.cpu_p)} vs threshold "
            + cpu_str(policy.interception.high_throughput_cpu)
        )
    else:
        throughput, tp_source = "normal", "no annotation or observed usage"
    lifecycle = "batch" if is_batch(pod) else "service"
    ctx.lines.append(
        f"workload: protocol {protocol} ({proto_source}), throughput {throughput} ({tp_source}), "
        f"lifecycle {lifecycle}"
    )
    return WorkloadTraits(protocol, throughput, lifecycle, summary)
