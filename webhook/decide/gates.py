"""Whether a pod that could be meshed may be: the checks of the decision table that end in
a skip before any node, mode or placement is looked at, in the order the table lists them
(a malformed pod, a namespace the policy leaves out, host networking, a proxy already there,
another mesh, no opt-in, a port the proxy needs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.core import ANN_STATUS, Notes
from webhook.dataplane import Flavour, others
from webhook.decide.podfacts import excluded, invalid, proxy_port_used
from webhook.policy import Policy
from webhook.reasons import Skip


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
) -> tuple[Skip, str] | None:
    """The skip and its text, or None where the pod goes on to the mode.

    ``present``: a proxy container the pod carries after ours were stripped; ``earlier``:
    the pod carries a status of ours (so that proxy is not ours as it is). ``opt_skip``:
    why the pod is not opted in, with ``opt_told`` the text to give (None: the reason's own
    text)."""
    spec = pod["spec"]
    problem = invalid(spec) if isinstance(original.get("spec"), dict) else "spec is missing"
    if problem is not None:
        return Skip.INVALID_POD, f"{Skip.INVALID_POD.text}: {problem}"
    not_here = excluded(namespace, policy)
    if not_here is not None:
        return not_here, f"{not_here.text} ({namespace})"
    if spec.get("hostNetwork") is True:
        return Skip.HOST_NETWORK, Skip.HOST_NETWORK.text
    if present is not None and earlier:
        text = (
            f"the pod already carries a {present} container, and {ANN_STATUS} does not show it to"
            " be ours as it is (no fingerprints, or it was changed since): it is left as it is"
        )
        ctx.warn(f"pod not meshed again: {text}")
        return Skip.PROXY_PRESENT, text
    owner = others.owner(pod)
    if owner is not None:
        mesh, evidence = owner
        same = mesh.lower() == plane.name
        text = (
            f"the pod is already meshed by {mesh}'s own injector ({evidence}); it is left as it is"
            if same
            else f"{mesh} already owns the pod ({evidence}); a second proxy would fight over its traffic"
        )
        return Skip.OTHER_MESH, text
    if present is not None:
        return Skip.PROXY_PRESENT, f"the pod already carries a {present} container"
    if opt_skip is not None:
        return opt_skip, opt_told if opt_told is not None else opt_skip.text
    used = proxy_port_used(spec, plane.ports)
    if used is not None:
        text = (
            f"a container of the pod already uses port {used}, which the {plane.name} proxy needs "
            f"({', '.join(map(str, plane.ports))})"
        )
        return Skip.PORT_CONFLICT, text
    return None
