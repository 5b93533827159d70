"""Which traffic-interception mode a pod gets.

Truth table for ``auto`` (first row that holds wins)::

    kernel unknown (no eligible node, or any unreadable)     -> iptables  kernel-unknown
    lowest kernel not eBPF-capable                           -> iptables  kernel-too-old
    namespace enforces 'restricted', microVM supported       -> microvm   restricted-namespace
    high-throughput gRPC workload, microVM supported         -> microvm   high-throughput-grpc
    otherwise                                                -> ebpf      ebpf-capable

An explicit annotation (``ebpf``, ``microvm``, ``iptables``) is honoured when supported and
otherwise falls back along microvm -> ebpf -> iptables, with a warning. Reaching iptables
is refused when the pod says ``iptables-fallback: "false"`` (skip), and so is iptables in a
namespace enforcing ``baseline`` or ``restricted`` unless the policy says a CNI plugin
installs the rules (the init container would add NET_ADMIN and NET_RAW, which both levels
reject, so the API server would refuse the pod).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from webhook.decide.scheduling import Eligibility
from webhook.policy import Interception
from webhook.reasons import Mode, ModeReason, Skip
from webhook.versions import Kernel, KubeVersion, parse_kernel

_CHAIN = (Mode.MICROVM, Mode.EBPF, Mode.IPTABLES)


@dataclass(frozen=True, slots=True)
class KernelFacts:
    lowest: Kernel | None
    lowest_raw: str | None
    unknown: str | None  # why the kernel is unknown, or None
    ebpf: bool
    microvm_kernel: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PodTraits:
    requested: str  # "auto" or a Mode value
    iptables_fallback: bool
    level: str  # the Pod Security level the namespace enforces
    high_throughput_grpc: bool

    @property
    def restricted(self) -> bool:
        return self.level == "restricted"


@dataclass(frozen=True, slots=True)
class Choice:
    mode: Mode | None
    reason: ModeReason | None
    text: str
    skip: Skip | None = None
    warning: str | None = None


def kernel_facts(elig: Eligibility, rules: Interception) -> KernelFacts:
    if elig.count == 0:
        return KernelFacts(None, None, "no eligible node is known", False, False)
    parsed: list[tuple[Kernel, str]] = []
    for raw in elig.kernels:
        kernel = parse_kernel(raw)
        if kernel is None:
            why = "an eligible node reports no kernel" if raw is None else f"kernel {raw!r} cannot be read"
            return KernelFacts(None, None, why, False, False)
        parsed.append((kernel, raw))  # type: ignore[arg-type]
    lowest, lowest_raw = min(parsed)
    ebpf = all(
        k >= rules.ebpf.min_kernel or any(fnmatchcase(raw, p) for p in rules.ebpf.capable_kernels)
        for k, raw in parsed
    )
    return KernelFacts(lowest, lowest_raw, None, ebpf, lowest >= rules.microvm.min_kernel)


def _supported(mode: Mode, kf: KernelFacts, server: KubeVersion | None, rules: Interception) -> str | None:
    """None when ``mode`` works here, else why not."""
    if mode is Mode.IPTABLES:
        return None
    if kf.unknown:
        return kf.unknown
    if mode is Mode.EBPF:
        return None if kf.ebpf else f"lowest kernel {kf.lowest_raw} is below {rules.ebpf.min_kernel}"
    if not kf.microvm_kernel:
        return f"lowest kernel {kf.lowest_raw} is below {rules.microvm.min_kernel}"
    if server is None:
        return "the API server version is unknown"
    if server < rules.microvm.min_server_version:
        return f"the cluster is {server}, below {rules.microvm.min_server_version}"
    return None


def _iptables_block(traits: PodTraits, rules: Interception) -> Choice | None:
    if traits.level == "privileged" or rules.iptables.cni_installs_rules:
        return None
    skip = Skip.IPTABLES_RESTRICTED if traits.restricted else Skip.IPTABLES_BASELINE
    return Choice(None, None, skip.text, skip=skip)


def choose_mode(
    kf: KernelFacts, traits: PodTraits, server: KubeVersion | None, rules: Interception
) -> Choice:
    if traits.requested in (m.value for m in Mode):
        requested = Mode(traits.requested)
        refusals: list[str] = []
        for mode in _CHAIN[_CHAIN.index(requested) :]:
            why_not = _supported(mode, kf, server, rules)
            if why_not is not None:
                refusals.append(f"{mode.value}: {why_not}")
                continue
            if mode is Mode.IPTABLES:
                if requested is not Mode.IPTABLES and not traits.iptables_fallback:
                    text = f"requested {requested.value} is not supported ({'; '.join(refusals)})"
                    return Choice(None, None, text, skip=Skip.FALLBACK_FORBIDDEN)
                blocked = _iptables_block(traits, rules)
                if blocked is not None:
                    return blocked
            if mode is requested:
                return Choice(
                    mode, ModeReason.ANNOTATION, f"{mode.value} requested by annotation and supported"
                )
            text = (
                f"requested {requested.value} is not supported ({'; '.join(refusals)}); "
                f"fell back to {mode.value}"
            )
            return Choice(mode, ModeReason.FALLBACK, text, warning=f"mesh-injector: {text}")
        raise AssertionError("iptables is always supported by the kernel")

    if kf.unknown or not kf.ebpf:
        reason = ModeReason.KERNEL_UNKNOWN if kf.unknown else ModeReason.KERNEL_TOO_OLD
        why = kf.unknown or f"lowest eligible kernel {kf.lowest_raw} is below {rules.ebpf.min_kernel}"
        if not traits.iptables_fallback:
            return Choice(None, None, f"{why}, and iptables is not allowed", skip=Skip.FALLBACK_FORBIDDEN)
        blocked = _iptables_block(traits, rules)
        if blocked is not None:
            return Choice(None, None, f"{why}; {blocked.text}", skip=blocked.skip)
        return Choice(Mode.IPTABLES, reason, f"{why}: iptables is the safe fallback")
    microvm_ok = _supported(Mode.MICROVM, kf, server, rules) is None
    if microvm_ok and traits.restricted:
        return Choice(
            Mode.MICROVM,
            ModeReason.RESTRICTED_NAMESPACE,
            f"namespace enforces 'restricted' and the cluster ({server}) runs sandboxed proxies",
        )
    if microvm_ok and traits.high_throughput_grpc:
        return Choice(
            Mode.MICROVM,
            ModeReason.HIGH_THROUGHPUT_GRPC,
            f"high-throughput gRPC workload on a {server} cluster with kernel {kf.lowest_raw}",
        )
    return Choice(Mode.EBPF, ModeReason.EBPF_CAPABLE, f"lowest eligible kernel {kf.lowest_raw} supports eBPF")
