"""``iptables``: the mesh's init container installs the redirect rules in the pod's network
namespace (``linkerd-init``'s proxy-init, ``istio-init``'s istio-iptables, or ``mesh-init``
loading our own ruleset), or, where the policy says a CNI plugin does
(``interception.iptables.cniInstallsRules``), the mesh's network validator checks them.

It works on any kernel, so it is the fallback of every other mode. Its init container adds
NET_ADMIN and NET_RAW, which the ``baseline`` and ``restricted`` Pod Security levels reject:
there it needs the CNI plugin. A sandboxed pod's traffic never crosses host-side rules; its
rules go inside the sandbox, which is ``microvm``. Which iptables backend the init container
uses (legacy or nft: one every eligible node has) is chosen next, in
``webhook.modes.firewall``.
"""

from __future__ import annotations

from webhook.dataplane.base import Flavour
from webhook.modes.base import Gap, Interception, Setting
from webhook.policy import Policy
from webhook.reasons import ModeReason, Skip

NEEDS = "nothing on the node: the init container (NET_ADMIN, NET_RAW) or the mesh's CNI plugin"


def missing(setting: Setting) -> Gap | None:
    if setting.sandbox is not None:
        return Gap(
            ModeReason.SANDBOXED_POD,
            f"the pod runs in sandbox {setting.sandbox.describe()}: "
            "its rules go inside the sandbox (microvm)",
        )
    return None


def blocked(setting: Setting) -> Skip | None:
    """The init container's capabilities are refused outside ``privileged``."""
    if setting.level == "privileged" or setting.policy.interception.iptables.cni_installs_rules:
        return None
    return Skip.IPTABLES_RESTRICTED if setting.level == "restricted" else Skip.IPTABLES_BASELINE


def interception(setting: Setting) -> Interception:
    if setting.policy.interception.iptables.cni_installs_rules:
        return Interception(init="validator", notes=("rules: installed by the mesh's CNI plugin",))
    return Interception(init="rules")


def supported_text(setting: Setting) -> str:
    if setting.policy.interception.iptables.cni_installs_rules:
        return "the mesh's CNI plugin installs the rules"
    return "the init container installs the rules"


def describe(policy: Policy, plane: Flavour) -> str:
    """What the mode needs and adds, for ``policy check``."""
    rules = policy.interception.iptables
    installs = "the mesh's CNI plugin" if rules.cni_installs_rules else "the init container"
    without = "; ".join(f"no {r.backend} on {r.describe()}" for r in rules.nodes_without)
    backend = (
        ""
        if rules.cni_installs_rules
        else f"; the init container's iptables backend is one every eligible node has "
        f"({without or 'no node is known to lack either'})"
    )
    return f"{installs} installs the rules (the init container: privileged namespaces only){backend}"
