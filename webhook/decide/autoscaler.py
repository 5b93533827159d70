"""Whether a VerticalPodAutoscaler sizes the proxy: then its resources are VPA's, never ours.

Read from VPA's source (kubernetes/autoscaler, vertical-pod-autoscaler 1.x):

- Its admission controller sizes only ``spec.containers``, from the recommendation of the
  VPA whose target owns the pod, for containers whose policy (their own, else ``*``) is not
  ``Off``, when the VPA's ``updateMode`` is not ``Off``. It writes ``vpaObservedContainers``:
  the names of the pod's containers as it saw them.
- Its updater evicts a pod whose requests stray from the recommendation, but only counts
  containers listed in ``vpaObservedContainers`` (every container where the annotation is
  missing); its recommender makes no recommendation for a container whose mode is ``Off``.

So the proxy is VPA's when a VPA targets the pod's workload, covers the proxy's container,
and its admission controller sees the proxy: the proxy is a regular container (a native
sidecar is an init container, which VPA never sizes), and VPA has not already admitted the
pod without it (``vpaObservedContainers`` present but without the proxy: its webhook ran
before ours, and is not run again). Then we never write the proxy's resources: on the first
admission it gets none from us and VPA's own admission sets them; when our webhook is
invoked again after VPA's (``reinvocationPolicy: IfNeeded``), the values VPA set are kept.
Everywhere else we size the proxy, and VPA's updater never evicts the pod for it: either
VPA did not see it, or its policy leaves it to us.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.cluster.snapshot import Autoscaler, ClusterSnapshot
from webhook.workload import WorkloadKey

OBSERVED = "vpaObservedContainers"


def autoscaler_for(snapshot: ClusterSnapshot, key: WorkloadKey) -> Autoscaler | None:
    """The VPA whose target is the pod's workload (its top controller, as VPA resolves it)."""
    if not snapshot.autoscalers:
        return None
    return snapshot.autoscalers.get((key.namespace, key.kind, key.name))


def sizes_proxy(
    vpa: Autoscaler, proxy: str, native: bool, annotations: Mapping[str, Any]
) -> tuple[bool, str]:
    """(VPA sizes the proxy, why or why not)."""
    if vpa.update_mode == "Off":
        return False, f"VPA {vpa.name} has updateMode Off"
    mode = vpa.mode_for(proxy)
    if mode == "Off":
        return False, f"VPA {vpa.name} leaves {proxy} alone (mode Off)"
    if native:
        return False, f"VPA {vpa.name} sizes regular containers only, and {proxy} is a native sidecar"
    observed = annotations.get(OBSERVED)
    if isinstance(observed, str):
        seen = [name.strip() for name in observed.split(",")]
        if proxy not in seen:
            return False, (
                f"VPA {vpa.name}'s admission ran before the proxy was added ({OBSERVED}: {observed}), "
                "so it neither sizes the proxy nor evicts for it"
            )
    return True, f"VPA {vpa.name} covers {proxy} (updateMode {vpa.update_mode}, mode {mode})"


def kept_resources(pod: Mapping[str, Any], proxy: str) -> dict[str, Any]:
    """The resources the received pod's proxy container already has (set by VPA after an
    earlier admission of ours), or none."""
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict) and c.get("name") == proxy and isinstance(c.get("resources"), dict):
                return dict(c["resources"])
    return {}
