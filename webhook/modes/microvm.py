"""``microvm``: the pod runs in a VM sandbox RuntimeClass (Kata Containers in production) and
its traffic is redirected inside the guest, by the flavour's own init container.

Host-level mechanisms cannot reach a sandbox: Merbridge's cgroup programs and the host's
pod-network-namespace rules never see the guest's sockets (``shared/sandbox`` shows both
missing a sandboxed app). So a microvm pod gets the flavour's iptables init container; its
NET_ADMIN is confined to the guest, but Pod Security judges the pod spec, not the sandbox,
so only a ``privileged`` namespace admits it. A mesh CNI plugin's rules live in the host's
pod network namespace and do not help.

The pod gets ``runtimeClassName`` from the policy (``interception.microvm.runtimeClass``)
only where that RuntimeClass exists in the cluster state. Its ``scheduling`` (node selector,
tolerations) narrows the nodes the pod may land on before their kernels are judged: the API
server's RuntimeClass admission merges it into the pod (and sets the pod's overhead), and
runs again after a webhook changed the pod, so the stored pod carries both. A pod that
names a RuntimeClass of its own that is not a sandbox keeps it and is not given microvm. A pod
that already names a sandbox RuntimeClass (the policy's ``sandboxHandlers``) is handled here too:
its rules go inside its sandbox; under gVisor only where the flavour's rules use features
gVisor's netstack accepts.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from webhook.cluster.snapshot import RuntimeClass
from webhook.dataplane.base import Flavour
from webhook.decide.nodefacts import kernel_facts
from webhook.decide.scheduling import Eligibility, eligible_nodes, merged_spec
from webhook.modes.base import Gap, Interception, Setting
from webhook.policy import Policy
from webhook.reasons import ModeReason, Skip

NEEDS = (
    "the policy's RuntimeClass (a VM sandbox such as Kata) in the cluster, nodes it schedules to at "
    "microvm.minKernel, a cluster at microvm.minServerVersion for auto, and a privileged namespace"
)


def sandbox_nodes(setting: Setting, rc: RuntimeClass) -> tuple[Eligibility | None, str | None]:
    """The nodes the pod may land on once it names ``rc``, or why it could land on none."""
    spec = setting.pod.get("spec") or {}
    merged, conflict = merged_spec(spec, rc)
    if merged is None:
        return None, conflict
    if not rc.node_selector and not rc.tolerations:
        return setting.elig, None
    return eligible_nodes(setting.snapshot, merged), None


def missing(setting: Setting) -> Gap | None:
    plane, policy = setting.plane, setting.policy
    rules = policy.interception.microvm
    if setting.sandbox is not None:
        if setting.sandbox.gvisor and not plane.rules_in_gvisor:
            return Gap(
                ModeReason.SANDBOXED_POD,
                f"the pod runs in gVisor ({setting.sandbox.describe()}), whose netstack refuses the "
                f"{plane.name} init container's rules ({plane.gvisor_gap})",
            )
        return None
    own = (setting.pod.get("spec") or {}).get("runtimeClassName")
    if isinstance(own, str) and own and own != rules.runtime_class:
        # the pod's own runtime is not a sandbox: giving it ours would override its choice, and
        # keeping its own would leave the pod on the host under a microvm label
        known = setting.snapshot.runtime_classes.get(own)
        handler = f"handler {known.handler}" if known is not None else "not in the cluster state"
        return Gap(
            ModeReason.NO_RUNTIME_CLASS, f"the pod names RuntimeClass {own} ({handler}), not a VM sandbox"
        )
    rc = setting.snapshot.runtime_classes.get(rules.runtime_class)
    if rc is None:
        return Gap(ModeReason.NO_RUNTIME_CLASS, f"RuntimeClass {rules.runtime_class} is not in the cluster")
    elig, conflict = sandbox_nodes(setting, rc)
    if elig is None:
        return Gap(ModeReason.NO_RUNTIME_CLASS, str(conflict))
    kf = setting.kernels if elig is setting.elig else kernel_facts(elig, policy.interception)
    if kf.unknown:
        return Gap(ModeReason.KERNEL_UNKNOWN, f"{kf.unknown} among RuntimeClass {rc.name}'s nodes")
    assert kf.lowest is not None
    if kf.lowest < rules.min_kernel:
        return Gap(ModeReason.KERNEL_TOO_OLD, f"lowest kernel {kf.lowest_raw} is below {rules.min_kernel}")
    if any(fnmatchcase(rc.handler, p) for p in rules.gvisor_handlers) and not plane.rules_in_gvisor:
        return Gap(
            ModeReason.NO_RUNTIME_CLASS,
            f"RuntimeClass {rc.name} runs gVisor, whose netstack refuses the {plane.name} "
            "init container's rules",
        )
    server = setting.snapshot.server_version
    if setting.auto and (server is None or server < rules.min_server_version):
        version = f"the cluster is {server}" if server is not None else "the API server version is unknown"
        return Gap(ModeReason.NO_RUNTIME_CLASS, f"{version}, below {rules.min_server_version}")
    return None


def supported_text(setting: Setting) -> str:
    if setting.sandbox is not None:
        return f"the pod runs in sandbox {setting.sandbox.describe()}; its rules are installed inside it"
    rules = setting.policy.interception.microvm
    return f"RuntimeClass {rules.runtime_class} exists; the rules are installed inside its VM"


def blocked(setting: Setting) -> Skip | None:
    """The in-guest init container's NET_ADMIN is judged on the pod spec like any other."""
    if setting.level == "privileged":
        return None
    return Skip.MICROVM_RESTRICTED if setting.level == "restricted" else Skip.MICROVM_BASELINE


def interception(setting: Setting) -> Interception:
    if setting.sandbox is not None:
        return Interception(init="rules", notes=(f"sandbox: {setting.sandbox.describe()}",))
    rules = setting.policy.interception.microvm
    rc = setting.snapshot.runtime_classes[rules.runtime_class]
    notes = [f"runtimeClassName: {rc.name} (handler {rc.handler})"]
    if rc.node_selector or rc.tolerations:
        elig, _ = sandbox_nodes(setting, rc)
        if elig is not None:
            notes.append(
                f"sandbox nodes: {elig.count} of {elig.total} by RuntimeClass {rc.name}'s scheduling"
            )
    return Interception(init="rules", runtime_class=rc.name, notes=tuple(notes))


def describe(policy: Policy, plane: Flavour) -> str:
    """What the mode needs and adds, for ``policy check``."""
    rules = policy.interception.microvm
    gvisor = "" if plane.rules_in_gvisor else f"; not under gVisor ({plane.gvisor_gap})"
    return (
        f"RuntimeClass {rules.runtime_class} in the cluster (auto: clusters >= "
        f"{rules.min_server_version}); the init container installs the rules inside the guest; "
        f"privileged namespaces only{gvisor}"
    )
