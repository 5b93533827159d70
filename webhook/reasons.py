"""Every decision mesh-injector makes carries one of these reasons.

The enum value is a short stable slug: it is what metrics use as a label (a fixed,
bounded set) and what `mesh-injector check` prints. The text is what a person reads in
the decision annotation, the skip-reason annotation and AdmissionResponse warnings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    EBPF = "ebpf"
    IPTABLES = "iptables"
    MICROVM = "microvm"
    # nothing is redirected: the flavour says the pod's traffic needs no redirect (its app
    # talks to the proxy itself); never asked for by annotation
    NONE = "none"


class Skip(StrEnum):
    """Why a pod is not meshed."""

    NOT_CREATE = "not-create"
    NOT_POD = "not-pod"
    SYSTEM_NAMESPACE = "system-namespace"
    OWN_NAMESPACE = "injector-namespace"
    POLICY_NAMESPACE = "policy-excluded-namespace"
    HOST_NETWORK = "host-network"
    PROXY_PRESENT = "proxy-already-present"
    POD_DISABLED = "pod-disabled"
    NAMESPACE_DISABLED = "namespace-disabled"
    NOT_OPTED_IN = "not-opted-in"
    FALLBACK_FORBIDDEN = "iptables-fallback-forbidden"
    IPTABLES_RESTRICTED = "iptables-in-restricted-namespace"
    PORT_CONFLICT = "proxy-port-conflict"
    NO_TRUST_ANCHORS = "no-trust-anchors"
    OTHER_MESH = "owned-by-another-mesh"
    OTHER_MESH_OPT_OUT = "other-mesh-opt-out"
    IPTABLES_BASELINE = "iptables-in-baseline-namespace"
    POD_SECURITY = "pod-security-violation"
    MICROVM_BASELINE = "microvm-in-baseline-namespace"
    MICROVM_RESTRICTED = "microvm-in-restricted-namespace"
    SANDBOX_UNSUPPORTED = "sandbox-unsupported"
    INVALID_POD = "invalid-pod"
    NAME_COLLISION = "name-collision"
    UNSUPPORTED_VERSION = "unsupported-version"
    UNKNOWN_REVISION = "unknown-revision"
    UNSUPPORTED_TEMPLATE = "unsupported-template"
    NO_COMMON_FIREWALL = "no-common-firewall"

    @property
    def text(self) -> str:
        return _SKIP_TEXT[self]


_SKIP_TEXT: dict[Skip, str] = {
    Skip.NOT_CREATE: "only CREATE operations are meshed",
    Skip.NOT_POD: "only Pods are meshed",
    Skip.SYSTEM_NAMESPACE: "system namespaces are never meshed",
    Skip.OWN_NAMESPACE: "the injector's own namespace is never meshed",
    Skip.POLICY_NAMESPACE: "the policy excludes this namespace",
    Skip.HOST_NETWORK: "hostNetwork pods share the node's network and cannot be meshed",
    Skip.PROXY_PRESENT: "the pod already carries a proxy container",
    Skip.POD_DISABLED: "the pod says mesh-injector.io/inject: disabled",
    Skip.NAMESPACE_DISABLED: "the namespace is labelled mesh-injector.io/inject: disabled",
    Skip.NOT_OPTED_IN: "neither the pod nor its namespace opted in, and injectByDefault is off",
    Skip.FALLBACK_FORBIDDEN: (
        'no supported mode is left without iptables, and mesh-injector.io/iptables-fallback is "false"'
    ),
    Skip.IPTABLES_RESTRICTED: (
        "iptables mode needs an init container with NET_ADMIN, which the namespace's "
        "'restricted' Pod Security level rejects"
    ),
    Skip.PORT_CONFLICT: "a container of the pod already uses a port the proxy needs",
    Skip.NO_TRUST_ANCHORS: "Linkerd's identity trust anchors are unknown, so the proxy could get no identity",
    Skip.OTHER_MESH: "another mesh already owns the pod",
    Skip.OTHER_MESH_OPT_OUT: "the pod opts out with another mesh's annotation or label",
    Skip.IPTABLES_BASELINE: (
        "iptables mode needs an init container with NET_ADMIN and NET_RAW, which the namespace's "
        "'baseline' Pod Security level rejects"
    ),
    Skip.POD_SECURITY: "what would be injected violates the namespace's enforced Pod Security level",
    Skip.MICROVM_BASELINE: (
        "microvm mode needs the flavour's init container (NET_ADMIN, NET_RAW) inside the sandbox, "
        "which the namespace's 'baseline' Pod Security level rejects"
    ),
    Skip.MICROVM_RESTRICTED: (
        "microvm mode needs the flavour's init container (NET_ADMIN, NET_RAW) inside the sandbox, "
        "which the namespace's 'restricted' Pod Security level rejects"
    ),
    Skip.SANDBOX_UNSUPPORTED: (
        "the pod runs in a sandbox where the proxy's redirect rules cannot be installed"
    ),
    Skip.INVALID_POD: "the pod is not one the API server accepts; it is left for the API server to refuse",
    Skip.NAME_COLLISION: "the pod already has a container or volume named like one the proxy needs",
    Skip.UNSUPPORTED_VERSION: "the mesh's control plane is older than any version mesh-injector renders",
    Skip.UNKNOWN_REVISION: (
        "the pod or its namespace names a control-plane revision the policy does not serve"
    ),
    Skip.UNSUPPORTED_TEMPLATE: "the pod asks for an injection template mesh-injector does not render",
    Skip.NO_COMMON_FIREWALL: (
        "no iptables backend (legacy or nft) that every eligible node has can be used by the mesh's "
        "init container"
    ),
}

# Skips that concern pods that asked to be meshed: they get the skip-reason annotation
# and a warning. The others are returned untouched.
OPTED_IN_SKIPS = frozenset(
    {
        Skip.SYSTEM_NAMESPACE,
        Skip.OWN_NAMESPACE,
        Skip.POLICY_NAMESPACE,
        Skip.HOST_NETWORK,
        Skip.FALLBACK_FORBIDDEN,
        Skip.IPTABLES_RESTRICTED,
        Skip.PORT_CONFLICT,
        Skip.NO_TRUST_ANCHORS,
        Skip.OTHER_MESH,
        Skip.IPTABLES_BASELINE,
        Skip.POD_SECURITY,
        Skip.MICROVM_BASELINE,
        Skip.MICROVM_RESTRICTED,
        Skip.SANDBOX_UNSUPPORTED,
        Skip.NAME_COLLISION,
        Skip.UNSUPPORTED_VERSION,
        Skip.UNKNOWN_REVISION,
        Skip.UNSUPPORTED_TEMPLATE,
        Skip.NO_COMMON_FIREWALL,
    }
)


class ModeReason(StrEnum):
    """Why this interception mode was chosen."""

    ANNOTATION = "annotation"
    FALLBACK = "fallback"
    KERNEL_UNKNOWN = "kernel-unknown"
    KERNEL_TOO_OLD = "kernel-too-old"
    NO_REDIRECTOR = "no-redirector"
    REDIRECTOR_UNSUPPORTED = "redirector-unsupported"
    # the pod's own init containers would run before its proxy, with their connections
    # already sent to it (Merbridge's CNI mode marks the pod's network from its start)
    INIT_CONTAINERS_BEFORE_PROXY = "init-containers-before-proxy"
    # a container of the pod listens on the port Merbridge's CNI plugin holds in every pod
    REDIRECTOR_PORT_CONFLICT = "redirector-port-conflict"
    EBPF_DISABLED = "ebpf-disabled"  # the policy turns ebpf off
    NO_RUNTIME_CLASS = "no-runtime-class"
    SANDBOXED_POD = "sandboxed-pod"
    BATCH_NATIVE_SIDECAR = "batch-native-sidecar"
    HIGH_THROUGHPUT_GRPC = "high-throughput-grpc"
    EBPF_CAPABLE = "ebpf-capable"
    # the flavour says the pod's traffic needs no redirect (proxyless gRPC): mode none
    NOTHING_TO_REDIRECT = "nothing-to-redirect"


class FirewallReason(StrEnum):
    """Why the init container installs its rules with this iptables backend."""

    CONTROL_PLANE = "control-plane"  # the control plane's setting; no eligible node known to lack it
    NODES = "nodes-lack-it"  # an eligible node lacks the control plane's: the other, which all have
    GVISOR = "gvisor"  # gVisor's netstack has the legacy one only
    GUEST_KERNEL = "guest-kernel"  # a VM sandbox: the guest's kernel, not the node's


class ResourceSource(StrEnum):
    ANNOTATION = "annotation"
    OBSERVED = "observed"
    PROFILE = "profile"
    VPA = "vpa"  # a VerticalPodAutoscaler sizes the proxy


@dataclass(frozen=True, slots=True)
class Stop:
    """Where a step of the decision ends it: the pod is not meshed, for this reason."""

    skip: Skip
    text: str
