"""Which interception mode a pod gets: the decision table.

Before the table: a pod whose flavour says its traffic needs no redirect (``Flavour.no_redirect``:
a proxyless gRPC app) gets ``none`` (``nothing-to-redirect``), whatever it asks for and
wherever it runs: no mechanism, so nothing to refuse and nothing to fall back from.

``auto`` (the first row that holds wins)::

    pod already in a sandbox RuntimeClass                       -> microvm   sandboxed-pod
    high-throughput gRPC, microvm present, namespace admits it  -> microvm   high-throughput-grpc
    ebpf's mechanism missing for the pod (ebpf.missing):
        kernel unknown                                          -> iptables  kernel-unknown
        lowest kernel below ebpf.minKernel                      -> iptables  kernel-too-old
        the policy turns ebpf off                               -> iptables  ebpf-disabled
        an eligible node without a Ready, matching Merbridge    -> iptables  no-redirector
        a proxy or exclusions Merbridge cannot handle           -> iptables  redirector-unsupported
        a container port or probe on Merbridge's port 39807     -> iptables  redirector-port-conflict
        init containers of its own (before a regular proxy)     -> iptables  init-containers-before-proxy
    batch pod, native sidecars available, iptables admitted     -> iptables  batch-native-sidecar
    otherwise                                                   -> ebpf      ebpf-capable

(ebpf needs the legacy placement, which keeps a Job's pod running after its app exits; where
the pod could have a native sidecar and iptables is admitted, a batch pod takes iptables.)

An explicit annotation (``ebpf``, ``microvm``, ``iptables``) is honoured when its mechanism
is present and the namespace admits what it adds, and otherwise falls back along
microvm -> ebpf -> iptables, with a warning. Reaching iptables is refused when the pod says
``iptables-fallback: "false"`` (skip), and so is iptables whose init container the
namespace's Pod Security level rejects (``baseline``, ``restricted``) unless a CNI plugin
installs the rules. A sandboxed pod can only be meshed inside its sandbox: any other
annotation is overridden with a warning, and the pod is skipped where that cannot work.

A pod given another mode than ebpf gets the annotations that keep Merbridge's hands off it
where Merbridge runs (``webhook.modes.ebpf.hands_off``): it does not look at our mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.core import Notes
from webhook.dataplane.base import ControlPlane, Flavour
from webhook.decide.placement import native_placement
from webhook.decide.podfacts import pod_exclusions, pod_option
from webhook.decide.survey import Survey
from webhook.modes import MODES
from webhook.modes.base import Interception, Setting, sandbox_of
from webhook.modes.ebpf import hands_off
from webhook.policy import Policy
from webhook.reasons import Mode, ModeReason, Skip, Stop

_CHAIN = (Mode.MICROVM, Mode.EBPF, Mode.IPTABLES)
# gaps that are the fleet's known state or the operator's choice, not something to fix
_QUIET_GAPS = (ModeReason.KERNEL_UNKNOWN, ModeReason.KERNEL_TOO_OLD, ModeReason.EBPF_DISABLED)
_MODE_NAMES = frozenset(m.value for m in Mode)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodTraits:
    requested: str  # "auto" or a Mode value
    iptables_fallback: bool
    high_throughput_grpc: bool
    batch: bool
    native_possible: bool  # the cluster and the pod allow a native sidecar


@dataclass(frozen=True, slots=True)
class Choice:
    mode: Mode | None
    reason: ModeReason | None
    text: str
    skip: Skip | None = None
    warning: str | None = None


def _skip(skip: Skip, text: str | None = None) -> Choice:
    return Choice(None, None, text or skip.text, skip=skip)


def _sandboxed(setting: Setting, traits: PodTraits) -> Choice:
    assert setting.sandbox is not None
    module = MODES[Mode.MICROVM]
    gap = module.missing(setting)
    if gap is not None:
        return _skip(Skip.SANDBOX_UNSUPPORTED, f"{Skip.SANDBOX_UNSUPPORTED.text}: {gap.text}")
    blocked = module.blocked(setting)
    if blocked is not None:
        return _skip(blocked)
    warning = None
    if traits.requested not in ("auto", Mode.MICROVM.value):
        warning = (
            f"mesh-injector: {traits.requested} was requested, but the pod runs in sandbox "
            f"{setting.sandbox.describe()}, where only in-sandbox rules reach its traffic"
        )
    return Choice(Mode.MICROVM, ModeReason.SANDBOXED_POD, module.supported_text(setting), warning=warning)


def _requested(setting: Setting, traits: PodTraits) -> Choice:
    requested = Mode(traits.requested)
    refusals: list[str] = []
    for mode in _CHAIN[_CHAIN.index(requested) :]:
        module = MODES[mode]
        gap = module.missing(setting)
        if gap is not None:
            refusals.append(f"{mode.value}: {gap.text}")
            continue
        blocked = module.blocked(setting)
        if mode is Mode.IPTABLES:
            if requested is not Mode.IPTABLES and not traits.iptables_fallback:
                text = f"requested {requested.value} is not supported ({'; '.join(refusals)})"
                return _skip(Skip.FALLBACK_FORBIDDEN, text)
            if blocked is not None:
                return _skip(blocked, f"{'; '.join([*refusals, blocked.text])}" if refusals else None)
        elif blocked is not None:
            refusals.append(f"{mode.value}: {blocked.text}")
            continue
        if mode is requested:
            return Choice(mode, ModeReason.ANNOTATION, f"{mode.value} requested by annotation and supported")
        text = (
            f"requested {requested.value} is not supported ({'; '.join(refusals)}); fell back to {mode.value}"
        )
        return Choice(mode, ModeReason.FALLBACK, text, warning=f"mesh-injector: {text}")
    raise AssertionError("iptables is present wherever the pod is not sandboxed")


def _nothing_to_redirect(why: str, traits: PodTraits) -> Choice:
    warning = None
    if traits.requested != "auto":
        warning = f"mesh-injector: interception {traits.requested} is not applied: {why}"
    return Choice(Mode.NONE, ModeReason.NOTHING_TO_REDIRECT, why, warning=warning)


def choose_mode(setting: Setting, traits: PodTraits) -> Choice:
    why = setting.plane.no_redirect(setting.pod, setting.control)
    if why is not None:
        return _nothing_to_redirect(why, traits)
    if setting.sandbox is not None:
        return _sandboxed(setting, traits)
    if traits.requested in _MODE_NAMES:
        return _requested(setting, traits)

    microvm = MODES[Mode.MICROVM]
    if traits.high_throughput_grpc and microvm.missing(setting) is None and microvm.blocked(setting) is None:
        return Choice(
            Mode.MICROVM,
            ModeReason.HIGH_THROUGHPUT_GRPC,
            f"high-throughput gRPC workload; {microvm.supported_text(setting)}",
        )
    ebpf, iptables = MODES[Mode.EBPF], MODES[Mode.IPTABLES]
    gap = ebpf.missing(setting)
    blocked = iptables.blocked(setting)
    if gap is not None:
        if not traits.iptables_fallback:
            return _skip(Skip.FALLBACK_FORBIDDEN, f"{gap.text}, and iptables is not allowed")
        if blocked is not None:
            return _skip(blocked, f"{gap.text}; {blocked.text}")
        text = f"{gap.text}: iptables is the safe fallback"
        # kernels too old for eBPF are a fleet's known state; a redirector missing where the
        # kernels could run it, or a pod it would break, is something to fix, so it is said to
        # whoever creates the pod
        warning = None if gap.reason in _QUIET_GAPS else f"mesh-injector: ebpf is not possible: {text}"
        return Choice(Mode.IPTABLES, gap.reason, text, warning=warning)
    if traits.batch and traits.native_possible and blocked is None and traits.iptables_fallback:
        return Choice(
            Mode.IPTABLES,
            ModeReason.BATCH_NATIVE_SIDECAR,
            "a batch pod: ebpf would need a regular-container proxy that keeps it running after its app "
            "exits; iptables lets the proxy be a native sidecar",
        )
    return Choice(Mode.EBPF, ModeReason.EBPF_CAPABLE, ebpf.supported_text(setting))


@dataclass(frozen=True, slots=True)
class Picked:
    """The chosen mode, what it was judged on and what it adds to the pod."""

    mode: Mode
    choice: Choice
    setting: Setting
    adds: Interception
    native_option: str  # the pod's native-sidecar annotation ("auto" where it has none)


def pick(
    pod: Mapping[str, Any],
    annotations: Mapping[str, str],
    found: Survey,
    plane: Flavour,
    control: ControlPlane,
    snapshot: ClusterSnapshot,
    policy: Policy,
    ctx: Notes,
) -> Picked | Stop:
    """The pod's annotations read, the table applied, the choice and what the mode adds
    said in the explanation."""
    requested = pod_option(annotations, "interception", ctx) or "auto"
    setting = Setting(
        elig=found.elig,
        kernels=found.kernels,
        snapshot=snapshot,
        policy=policy,
        plane=plane,
        control=control,
        pod=pod,
        annotations=annotations,
        sandbox=sandbox_of(pod, snapshot, policy),
        level=found.levels.enforce,
        auto=requested == "auto",
        exclusions=pod_exclusions(annotations, policy, ctx),
    )
    native_option = pod_option(annotations, "native-sidecar", ctx) or "auto"
    traits = found.traits
    native_possible = native_placement(native_option, found.server, found.elig, policy, Notes())[0]
    choice = choose_mode(
        setting,
        PodTraits(
            requested=requested,
            iptables_fallback=pod_option(annotations, "iptables-fallback", ctx) != "false",
            high_throughput_grpc=traits.protocol == "grpc" and traits.throughput == "high",
            batch=traits.batch,
            native_possible=native_possible,
        ),
    )
    if choice.mode is None:
        assert choice.skip is not None
        return Stop(choice.skip, choice.text)
    if choice.warning:
        ctx.warn(choice.warning)
    ctx.lines.append(
        f"mode: {choice.mode.value} ({choice.reason.value if choice.reason else ''}): {choice.text}"
    )
    adds = MODES[choice.mode].interception(setting)
    if choice.mode is not Mode.EBPF:  # its placement is the one native_placement gives
        adds, warning = hands_off(setting, adds, native_possible)
        if warning:
            ctx.warn(warning)
    ctx.lines.extend(adds.notes)
    return Picked(choice.mode, choice, setting, adds, native_option)
