"""Which iptables backend the init container installs the redirect rules with: ``legacy``
(the kernel's x_tables API) or ``nft`` (nf_tables).

The init container writes the rules into the pod's network namespace, through the kernel of
the node the pod lands on, and a backend that kernel lacks fails: the init container
crash-loops and the pod never starts (Amazon Linux 2023 from EKS 1.33 on no longer loads
``iptable_nat``; Bottlerocket's 1.33+ variants have no legacy modules). The pod is not
scheduled yet, so the backend must be one every node it may land on has. Which nodes lack
which backend is the policy's data (``interception.iptables.nodesWithout``), matched on what
the nodes report, once per distinct platform of the eligible nodes
(``webhook.decide.nodefacts``).

First row that holds::

    nothing of ours installs rules (ebpf; a CNI plugin, which installs them with the
    backend its own configuration names; a validator only)         -> none
    the pod runs under gVisor (its own sandbox, or the RuntimeClass
    microvm gives it): gVisor's netstack has legacy only            -> legacy       gvisor
        (this version's init container cannot use legacy)           -> skip         sandbox-unsupported
    microvm in a VM sandbox: the rules go into the guest's kernel,
    which the nodes' OS images say nothing about                    -> the control plane's  guest-kernel
    no eligible node is known to lack the control plane's backend
    (no eligible node known at all, too)                            -> the control plane's  control-plane
    every eligible node has the other one, and this version's init
    container can be told to use it                                 -> the other    nodes-lack-it
    otherwise                                                       -> skip         no-common-firewall

A skip names the nodes that lack each backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from webhook.core import Notes
from webhook.dataplane.base import ControlPlane
from webhook.decide.nodefacts import firewall_facts
from webhook.decide.scheduling import Eligibility, Platform
from webhook.modes.choice import Picked
from webhook.policy import Firewall, Policy
from webhook.reasons import FirewallReason, Mode, Skip, Stop

OTHER: dict[Firewall, Firewall] = {"legacy": "nft", "nft": "legacy"}


@dataclass(frozen=True, slots=True)
class Backend:
    """The backend chosen for the init container's rules, why, and the sentence a person reads."""

    firewall: Firewall
    reason: FirewallReason
    text: str

    @property
    def line(self) -> str:
        return f"firewall: {self.firewall} ({self.reason.value}): {self.text}"


def _gvisor(picked: Picked, policy: Policy) -> bool:
    """The rules are installed by gVisor's netstack: the pod's own sandbox, or the RuntimeClass
    microvm gives it, runs gVisor."""
    sandbox = picked.setting.sandbox
    if sandbox is not None:
        return sandbox.gvisor
    name = picked.adds.runtime_class
    rc = picked.setting.snapshot.runtime_classes.get(name) if name else None
    return rc is not None and any(
        fnmatchcase(rc.handler, p) for p in policy.interception.microvm.gvisor_handlers
    )


def _nodes(platforms: tuple[Platform, ...]) -> str:
    return "; ".join(p.describe() for p in platforms)


def _on_nodes(control: ControlPlane, elig: Eligibility, policy: Policy) -> Backend | Stop:
    """The backend every eligible node has, the control plane's first."""
    asked = control.firewall
    if elig.count == 0:
        return Backend(asked, FirewallReason.CONTROL_PLANE, "the mesh's setting (no eligible node is known)")
    facts = firewall_facts(elig, policy.interception.iptables)
    if facts.has_all(asked):
        return Backend(
            asked, FirewallReason.CONTROL_PLANE, "the mesh's setting; no eligible node is known to lack it"
        )
    other = OTHER[asked]
    lacking = f"{asked} is missing on {_nodes(facts.lacking(asked))}"
    if not facts.has_all(other):
        return Stop(
            Skip.NO_COMMON_FIREWALL,
            f"{Skip.NO_COMMON_FIREWALL.text}: {lacking}, and {other} on {_nodes(facts.lacking(other))}",
        )
    if other not in control.firewalls:
        version = f" (version {control.version})" if control.version else ""
        return Stop(
            Skip.NO_COMMON_FIREWALL,
            f"{Skip.NO_COMMON_FIREWALL.text}: {lacking}, and the mesh's init container{version} can only use "
            f"{', '.join(control.firewalls)}",
        )
    return Backend(
        other,
        FirewallReason.NODES,
        f"the mesh's setting is {asked}, which is missing on {_nodes(facts.lacking(asked))}; every eligible "
        f"node has {other}",
    )


def choose_firewall(
    picked: Picked, control: ControlPlane, elig: Eligibility, policy: Policy, ctx: Notes
) -> Backend | Stop | None:
    """The backend for the pod's init container (None where nothing of ours installs rules
    with one), said in the explanation; a ``Stop`` where none can work."""
    if picked.adds.init != "rules":
        if picked.mode is Mode.IPTABLES:
            ctx.lines.append(
                "firewall: none of ours: the mesh's CNI plugin installs the rules, with the backend its own "
                "configuration names"
            )
        return None
    if _gvisor(picked, policy):
        if "legacy" not in (control.firewall, *control.firewalls):
            return Stop(
                Skip.SANDBOX_UNSUPPORTED,
                f"{Skip.SANDBOX_UNSUPPORTED.text}: gVisor's netstack loads legacy iptables rules only, and "
                f"the mesh's init container can only use {', '.join(control.firewalls)}",
            )
        chosen = Backend(
            "legacy", FirewallReason.GVISOR, "gVisor's netstack loads legacy iptables rules only"
        )
    elif picked.mode is Mode.MICROVM:
        chosen = Backend(
            control.firewall,
            FirewallReason.GUEST_KERNEL,
            "the mesh's setting: the rules go into the sandbox's guest kernel, not the node's",
        )
    else:
        found = _on_nodes(control, elig, policy)
        if isinstance(found, Stop):
            return found
        chosen = found
    ctx.lines.append(chosen.line)
    return chosen
