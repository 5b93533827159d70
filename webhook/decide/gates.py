"""Whether a pod that could be meshed may be: the checks of the decision table that end in
a skip before any node, mode or placement is looked at, in the order the table lists them
(a malformed pod, a namespace the policy leaves out, host networking, a proxy already there,
another mesh, no opt-in, a port the proxy needs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import ANN_STATUS, Notes
from webhook.dataplane import PROXY_NAMES, Flavour, others
from webhook.decide.podfacts import excluded, invalid, opt_in, proxy_port_used, str_map
from webhook.policy import Policy
from webhook.reasons import Skip, Stop


@dataclass(frozen=True, slots=True)
class Admissible:
    """Whether the pod asked to be meshed, what it and its namespace say, and the check
    that ends the decision here (None: the pod goes on to its control plane and mode)."""

    opted: bool
    annotations: Mapping[str, str]
    ns_labels: Mapping[str, str]
    stop: Stop | None


def admissible(
    original: Mapping[str, Any],
    pod: Mapping[str, Any],
    namespace: str,
    snapshot: ClusterSnapshot,
    policy: Policy,
    plane: Flavour,
    *,
    earlier: bool,
    assume_opt_in: bool,
    ctx: Notes,
) -> Admissible:
    """The opt-in (said in the explanation), then the table's skips in order."""
    meta = pod["metadata"]
    labels, annotations = str_map(meta.get("labels")), str_map(meta.get("annotations"))
    ns_labels = snapshot.namespaces.get(namespace, {})
    opted, opt_skip, opt_source = opt_in(labels, annotations, ns_labels, policy, assume_opt_in)
    unknown_ns = opt_skip is Skip.NOT_OPTED_IN and namespace not in snapshot.namespaces
    if unknown_ns:
        opt_source = (
            f"namespace {namespace} is not in the cluster state ({snapshot.source}), "
            "so its labels are unknown"
        )
    ctx.lines.append(f"opt-in: {'yes' if opted else 'no'} ({opt_source})")
    told = opt_skip is Skip.OTHER_MESH_OPT_OUT or unknown_ns
    stop = gate(
        original,
        pod,
        namespace,
        policy,
        plane,
        present=present_proxy(pod),
        earlier=earlier,
        opt_skip=opt_skip,
        opt_told=f"{opt_skip.text} ({opt_source})" if opt_skip is not None and told else None,
        ctx=ctx,
    )
    return Admissible(opted, annotations, ns_labels, stop)


def present_proxy(pod: Mapping[str, Any]) -> str | None:
    """The name of a proxy container the pod already carries (any flavour's), if any."""
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        items = spec.get(key)
        for c in items if isinstance(items, list) else ():
            name = c.get("name") if isinstance(c, dict) else None
            if isinstance(name, str) and name in PROXY_NAMES:
                return name
    return None


def gate(
    original: Mapping[str, Any],
    pod: Mapping[str, Any],
    namespace: str,
    policy: Policy,
    plane: Flavour,
    *,
    present: str | None,
    earlier: bool,
    opt_skip: Skip | None,
    opt_told: str | None,
    ctx: Notes,
) -> Stop | None:
    """The skip and its text, or None where the pod goes on to the mode.

    ``present``: a proxy container the pod carries after ours were stripped; ``earlier``:
    the pod carries a status of ours (so that proxy is not ours as it is). ``opt_skip``:
    why the pod is not opted in, with ``opt_told`` the text to give (None: the reason's own
    text)."""
    spec = pod["spec"]
    problem = invalid(spec) if isinstance(original.get("spec"), dict) else "spec is missing"
    if problem is not None:
        return Stop(Skip.INVALID_POD, f"{Skip.INVALID_POD.text}: {problem}")
    not_here = excluded(namespace, policy)
    if not_here is not None:
        return Stop(not_here, f"{not_here.text} ({namespace})")
    if spec.get("hostNetwork") is True:
        return Stop(Skip.HOST_NETWORK, Skip.HOST_NETWORK.text)
    if present is not None and earlier:
        text = (
            f"the pod already carries a {present} container, and {ANN_STATUS} does not show it to"
            " be ours as it is (no fingerprints, or it was changed since): it is left as it is"
        )
        ctx.warn(f"pod not meshed again: {text}")
        return Stop(Skip.PROXY_PRESENT, text)
    owner = others.owner(pod)
    if owner is not None:
        mesh, evidence = owner
        same = mesh.lower() == plane.name
        text = (
            f"the pod is already meshed by {mesh}'s own injector ({evidence}); it is left as it is"
            if same
            else f"{mesh} already owns the pod ({evidence}); a second proxy would fight over its traffic"
        )
        return Stop(Skip.OTHER_MESH, text)
    if present is not None:
        return Stop(Skip.PROXY_PRESENT, f"the pod already carries a {present} container")
    if opt_skip is not None:
        return Stop(opt_skip, opt_told if opt_told is not None else opt_skip.text)
    used = proxy_port_used(spec, plane.ports)
    if used is not None:
        text = (
            f"a container of the pod already uses port {used}, which the {plane.name} proxy needs "
            f"({', '.join(map(str, plane.ports))})"
        )
        return Stop(Skip.PORT_CONFLICT, text)
    return None
