"""The mesh's control plane, as a pod of the policy's flavour needs it: what the flavour
reads of it in the cluster (or takes from the policy), and the namespace's annotations
the pod inherits, as the mesh's own injector copies them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import Notes
from webhook.dataplane.base import ControlPlane, Flavour
from webhook.decide.placement import mesh_native
from webhook.decide.podfacts import inherit, str_map
from webhook.policy import Policy
from webhook.reasons import Stop


@dataclass(frozen=True, slots=True)
class Connected:
    control: ControlPlane
    inherited: tuple[str, ...]  # the namespace annotations the pod inherited
    annotations: Mapping[str, str]  # the pod's, with those
    # where the control plane's own injector would place the proxy (native?), and why
    native: tuple[bool, str] | None = None


def control_plane(plane: Flavour, snapshot: ClusterSnapshot, policy: Policy) -> ControlPlane:
    """What ``plane`` reads of its control plane in ``snapshot``: made once per snapshot and
    policy (its ConfigMaps change only with a new snapshot), not once per pod."""
    key = ("control-plane", plane.name, id(policy))
    found = snapshot.memo.get(key)
    if isinstance(found, tuple) and found[0] is policy:
        return found[1]  # type: ignore[no-any-return]
    control = plane.control_plane(snapshot.config_maps, policy)
    snapshot.memo.put(key, (policy, control), 4096)  # the entry keeps the policy: its id stays its own
    return control


def connect(
    plane: Flavour,
    pod: dict[str, Any],
    namespace: str,
    annotations: Mapping[str, str],
    snapshot: ClusterSnapshot,
    policy: Policy,
    ctx: Notes,
) -> Connected | Stop:
    """The control plane's configuration, said in the explanation (a ``Stop`` where no pod
    can be meshed without what is missing); the inherited annotations are put on ``pod``."""
    if plane.control_for is not None:
        labels = str_map(pod["metadata"].get("labels"))
        ns_labels = snapshot.namespaces.get(namespace, {})
        control = plane.control_for(snapshot.config_maps, policy, labels, ns_labels)
    else:
        control = control_plane(plane, snapshot, policy)
    if control.missing is not None:
        return Stop(*control.missing)
    ctx.lines.append(control.line)
    for warning in control.warnings:
        ctx.warn(warning)
    inherited = inherit(pod, snapshot.namespace_annotations.get(namespace), plane.inherits)
    if inherited:
        annotations = str_map(pod["metadata"].get("annotations"))
        ctx.lines.append(f"namespace {namespace}: the pod inherits {', '.join(inherited)}")
    native = None
    if control.native is not None:
        native = mesh_native(control.native, annotations, pod["spec"].get("nodeName"), snapshot)
    return Connected(control, inherited, annotations, native)
