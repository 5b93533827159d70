"""Data-plane flavours: whose proxy a meshed pod gets (``proxy.flavour`` in the policy).

Every flavour renders the same decision (mode, placement, resources, skip ports) into the
containers, volumes, labels and annotations its mesh expects; see ``base.Flavour``.
"""

from __future__ import annotations

from webhook.dataplane import generic, istio, linkerd
from webhook.dataplane.base import Build, DataPlane, Flavour
from webhook.policy import FlavourPolicy, Policy

FLAVOURS: dict[str, Flavour] = {f.name: f for f in (linkerd.FLAVOUR, istio.FLAVOUR, generic.FLAVOUR)}
# Every proxy container we can inject: observed usage is read from any of them.
PROXY_NAMES = frozenset(f.proxy_name for f in FLAVOURS.values())
# Environment variables whose values name the workload (in any flavour's containers).
NAMED_ENV = frozenset(name for f in FLAVOURS.values() for name in f.named_env)
# what each flavour's section of the policy file is (``webhook.loading`` reads policies with it)
POLICY_SECTIONS: dict[str, FlavourPolicy] = {name: f.policy for name, f in FLAVOURS.items()}


def flavour(name: str) -> Flavour:
    return FLAVOURS[name]


def config_maps(policy: Policy) -> tuple[tuple[str, str], ...]:
    """The ConfigMaps, as (namespace, name), the policy's flavour reads from the cluster."""
    return FLAVOURS[policy.proxy.flavour].config_maps(policy)


def describe(policy: Policy) -> list[str]:
    """What the policy's flavour puts in a pod and what it needs, for ``policy check``."""
    return FLAVOURS[policy.proxy.flavour].describe(policy, policy.interception.iptables.cni_installs_rules)


__all__ = [
    "FLAVOURS",
    "NAMED_ENV",
    "POLICY_SECTIONS",
    "PROXY_NAMES",
    "Build",
    "DataPlane",
    "Flavour",
    "config_maps",
    "describe",
    "flavour",
]
