"""Data-plane flavours: whose proxy a meshed pod gets (``proxy.flavour`` in the policy).

Every flavour renders the same decision (mode, placement, resources, skip ports) into the
containers, volumes, labels and annotations its mesh expects; see ``base.Flavour``.
"""

from __future__ import annotations

from webhook.dataplane import generic, istio, linkerd
from webhook.dataplane.base import Build, DataPlane, Flavour
from webhook.policy import Policy

FLAVOURS: dict[str, Flavour] = {f.name: f for f in (linkerd.FLAVOUR, istio.FLAVOUR, generic.FLAVOUR)}
# Every proxy container we can inject: observed usage is read from any of them.
PROXY_NAMES = frozenset(f.proxy_name for f in FLAVOURS.values())
# Environment variables whose values name the workload (in any flavour's containers).
NAMED_ENV = frozenset(name for f in FLAVOURS.values() for name in f.named_env)


def flavour(name: str) -> Flavour:
    return FLAVOURS[name]


def config_maps(policy: Policy) -> tuple[tuple[str, str], ...]:
    """The ConfigMaps, as (namespace, name), the policy's flavour reads from the cluster."""
    return FLAVOURS[policy.proxy.flavour].config_maps(policy)


def describe(policy: Policy) -> list[str]:
    """What the policy's flavour puts in a pod and what it needs, for ``policy check``."""
    name = policy.proxy.flavour
    cni = policy.interception.iptables.cni_installs_rules
    if name == "linkerd":
        s = policy.proxy.linkerd
        anchors = (
            "from the policy (proxy.linkerd.trustAnchorsPem)"
            if s.trust_anchors_pem
            else f"from ConfigMap {s.namespace}/linkerd-identity-trust-roots, key ca-bundle.crt "
            "(watched by serve; read from --cluster or --kubeconfig by the dry-run verbs)"
        )
        svc = f"{s.namespace}.svc.{s.cluster_domain}."
        return [
            f"data plane: linkerd: linkerd-proxy {s.image}",
            f"  control plane: namespace {s.namespace}; destination linkerd-dst-headless.{svc}:8086, "
            f"policy linkerd-policy.{svc}:8090, identity linkerd-identity-headless.{svc}:8080",
            f"  identity: trust domain {s.trust_domain}; trust anchors {anchors}",
            "  iptables mode: "
            + (
                "linkerd-network-validator (a CNI plugin installs the rules)"
                if cni
                else f"linkerd-init {s.init_image}"
            ),
        ]
    if name == "istio":
        s = policy.proxy.istio
        ((ns, mesh),) = istio.config_maps(policy)
        return [
            f"data plane: istio: istio-proxy {s.image}",
            f"  istiod: {s.ca_address} (revision {s.revision}); trust domain {s.trust_domain}, "
            f"cluster id {s.cluster_id}, mesh id {s.mesh_id or s.trust_domain}",
            f"  mesh config: defaultConfig and trustDomain from ConfigMap {ns}/{mesh}, key mesh, over "
            "these (watched by serve; read from --cluster or --kubeconfig by the dry-run verbs)",
            "  iptables mode: "
            + ("istio-validation (a CNI plugin installs the rules)" if cni else f"istio-init {s.image}"),
        ]
    return [
        f"data plane: generic: mesh-proxy {policy.proxy.image}",
        "  iptables mode: "
        + (
            "no init container (a CNI plugin installs the rules)"
            if cni
            else f"mesh-init {policy.proxy.init_image}"
        ),
    ]


__all__ = [
    "FLAVOURS",
    "NAMED_ENV",
    "PROXY_NAMES",
    "Build",
    "DataPlane",
    "Flavour",
    "config_maps",
    "describe",
    "flavour",
]
