"""The decision rendered onto the pod: the flavour's data plane built from what the steps
decided (``Build``), placed with what the mode adds beside it (``Plan``), and checked
against the namespace's Pod Security level."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.core import Notes, ProxyResources
from webhook.dataplane import Build, Flavour
from webhook.dataplane.base import Refused
from webhook.decide.control import Connected
from webhook.decide.memo import ALIAS
from webhook.decide.placement import Placement
from webhook.decide.survey import Survey
from webhook.modes.choice import Picked
from webhook.modes.firewall import Backend
from webhook.patch.inject import NameCollision, Plan, apply_plan, shallow_pod
from webhook.podsecurity import refusal
from webhook.policy import Policy
from webhook.reasons import Skip, Stop
from webhook.workload import WorkloadKey


def render(
    original: Mapping[str, Any],
    pod: dict[str, Any],
    workload: WorkloadKey,
    plane: Flavour,
    connected: Connected,
    found: Survey,
    picked: Picked,
    firewall: Backend | None,
    placed: Placement,
    resources: ProxyResources,
    policy: Policy,
    ctx: Notes,
    *,
    alias: bool,
) -> dict[str, Any] | Stop:
    """The meshed pod (a copy of ``pod``), or why it cannot be: a name the pod already uses,
    or what the namespace's Pod Security level refuses. ``alias``: the flavour names the
    workload with a stand-in (a template memo entry puts each workload's name in)."""
    choice, excl = picked.choice, picked.setting.exclusions
    rules = f"firewall {firewall.firewall}: {firewall.text}; " if firewall is not None else ""
    decision = (
        f"{plane.name} proxy; mode {picked.mode.value}: {choice.text}; {rules}"
        f"{placed.text}: {placed.why}{placed.batch_note}; resources: {resources.detail}"
    )
    if connected.native is not None and connected.native[0] != placed.native:
        theirs = "a native sidecar" if connected.native[0] else "a regular container"
        ctx.lines.append(
            f"placement: the control plane's own injector would make the proxy {theirs} here "
            f"({connected.native[1]}); the placement is mesh-injector's ({placed.why})"
        )
    sandbox = picked.setting.sandbox
    build = Build(
        mode=picked.mode,
        native=placed.native,
        protocol=found.traits.protocol,
        resources=resources,
        init=picked.adds.init,
        runtime_class=picked.adds.runtime_class or (sandbox.name if sandbox else None),
        skip_inbound=excl.inbound,
        skip_outbound=excl.outbound,
        skip_cidrs=excl.cidrs,
        skip_sources=excl.sources,
        workload=WorkloadKey(workload.namespace, workload.kind, ALIAS) if alias else workload,
        batch=found.traits.batch,
        control=connected.control.config,
        firewall=firewall.firewall if firewall is not None else connected.control.firewall,
    )
    plan = Plan(
        flavour=plane,
        build=build,
        decision=decision,
        annotations=picked.adds.annotations,
        runtime_class=picked.adds.runtime_class,
        inherited=connected.inherited,
        firewall=firewall.firewall if firewall is not None else None,
        mesh_version=connected.control.version,
    )
    meshed = shallow_pod(pod)
    try:
        added = apply_plan(meshed, plan, policy, received=original, ctx=ctx)
    except NameCollision as clash:
        return Stop(
            Skip.NAME_COLLISION, f"{Skip.NAME_COLLISION.text}: the pod's own {clash} would be duplicated"
        )
    except Refused as refused:
        return Stop(refused.skip, refused.text)
    if added.get("probes"):
        taken = "; ".join(f"{c}: {', '.join(fields)}" for c, fields in added["probes"].items())
        ctx.lines.append(f"probes: the {plane.name} agent runs them on the pod's behalf ({taken})")
    inits = [*added["containers"], *added["initContainers"]]
    refused = refusal(meshed, inits, added["volumes"], found.levels, ctx)
    if refused is not None:
        return Stop(Skip.POD_SECURITY, refused)
    return meshed
