"""What every interception mode is judged on, and what a chosen mode adds to the pod.

A mode is a mechanism that exists somewhere outside the pod or inside it: Merbridge's
programs on the node (``ebpf``), the mesh's init container or CNI plugin (``iptables``), a VM
sandbox with the init container inside it (``microvm``). Each mode module answers the same
three questions from a ``Setting``:

- ``missing(setting)``: is the mechanism known to be present for this pod? ``None`` when it
  is, else a ``Gap`` (a reason slug and the sentence a person reads);
- ``blocked(setting)``: would what it adds be refused by the namespace's Pod Security level?
- ``interception(setting)``: what it adds to the pod (an init container, annotations, the
  RuntimeClass, a placement it requires), for the data-plane flavour to render.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.dataplane.base import ControlPlane, Flavour, Ports
from webhook.decide.nodefacts import KernelFacts
from webhook.decide.podfacts import Exclusions
from webhook.decide.scheduling import Eligibility
from webhook.policy import Policy
from webhook.reasons import ModeReason


@dataclass(frozen=True, slots=True)
class Sandbox:
    """The sandbox RuntimeClass a pod already names."""

    name: str
    handler: str | None  # None: the RuntimeClass is not in the cluster state
    gvisor: bool  # gVisor's netstack: its iptables refuses some features

    def describe(self) -> str:
        handler = f"handler {self.handler}" if self.handler else "not in the cluster state"
        return f"RuntimeClass {self.name} ({handler})"


def sandbox_of(pod: Mapping[str, Any], snapshot: ClusterSnapshot, policy: Policy) -> Sandbox | None:
    """The sandbox the pod already runs in (its ``runtimeClassName``, matched by handler, or
    by name where the class is unknown, against the policy's sandbox handlers)."""
    name = (pod.get("spec") or {}).get("runtimeClassName")
    if not isinstance(name, str) or not name:
        return None
    rules = policy.interception.microvm
    known = snapshot.runtime_classes.get(name)
    handler = known.handler if known is not None else None
    candidates = [handler] if handler is not None else [name]
    if not any(fnmatchcase(c, p) for c in candidates for p in rules.sandbox_handlers):
        return None
    gvisor = any(fnmatchcase(c, p) for c in candidates for p in rules.gvisor_handlers)
    return Sandbox(name=name, handler=handler, gvisor=gvisor)


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """What a mode is judged on, for one pod."""

    elig: Eligibility
    kernels: KernelFacts
    snapshot: ClusterSnapshot
    policy: Policy
    plane: Flavour
    control: ControlPlane  # what the flavour read of its control plane (its redirect rules)
    pod: Mapping[str, Any]  # the pod as received, with any earlier injection of ours taken off
    annotations: Mapping[str, Any]
    sandbox: Sandbox | None
    level: str  # the Pod Security level the namespace enforces
    auto: bool  # chosen by the table, not asked for by annotation
    exclusions: Exclusions = field(default_factory=Exclusions)
    # what a mode derives from the rest for one of its questions and needs for another (as
    # ``Eligibility.derived`` keeps what is derived from the nodes)
    derived: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def redirector_namespace(self) -> str:
        return self.policy.redirector_namespace


@dataclass(frozen=True, slots=True)
class Gap:
    """Why a mode's mechanism is not known to be present for a pod."""

    reason: ModeReason
    text: str


InitKind = Literal["rules", "validator"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Interception:
    """What a chosen mode adds to the pod, for the flavour to render and the patch to place.

    ``init``: the flavour's init container that installs the redirect rules, or its network
    validator (which only checks that something else redirects), or none. ``annotations`` are
    what the mode's mechanism reads from the pod. ``legacy_only`` says why the proxy must be a
    regular container (the mechanism finds it only there)."""

    init: InitKind | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    runtime_class: str | None = None
    legacy_only: str | None = None
    notes: tuple[str, ...] = ()  # lines for the explanation


def ports_text(ports: Ports) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports)
