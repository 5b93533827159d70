"""Where the proxy goes: a native sidecar (an init container that keeps running, Kubernetes
1.29+ on the API server and every eligible kubelet) or a regular container."""

from __future__ import annotations

from webhook.core import Notes
from webhook.decide.scheduling import Eligibility
from webhook.policy import Policy
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
