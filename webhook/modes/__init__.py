"""Interception modes: the mechanisms that send a meshed pod's traffic through its proxy.

One module per mode (``ebpf``, ``iptables``, ``microvm``), each with the same small surface
(``webhook.modes.base``): what it needs (``NEEDS``), whether that is known to be present
for a pod (``missing``), whether the namespace admits what it adds (``blocked``), what it
adds (``interception``) and how it is described (``supported_text``). ``choice`` holds the
decision table that picks among them. Adding a mode is one module here, its entry in
``MODES`` and its row in the table.
"""

from __future__ import annotations

from types import ModuleType

from webhook.dataplane import flavour
from webhook.modes import ebpf, iptables, microvm
from webhook.policy import Policy
from webhook.reasons import Mode

MODES: dict[Mode, ModuleType] = {Mode.EBPF: ebpf, Mode.IPTABLES: iptables, Mode.MICROVM: microvm}
# the labels and annotations a mode writes beside the flavour's
MARKS = frozenset(ebpf.MARKS)


def describe(policy: Policy) -> list[str]:
    """What each mode needs in the cluster and adds to a pod of the policy's flavour, for
    ``policy check``."""
    plane = flavour(policy.proxy.flavour)
    rules = policy.interception
    agent = rules.ebpf.redirector
    if plane.redirect is None:
        ebpf_line = f"not available: Merbridge does not recognise the {plane.proxy_name} proxy"
    else:
        cni = ", --cni-mode" if agent.require_cni_mode else ""
        validator = (
            "; adds the network validator"
            if agent.network_validator and plane.validator_under_redirector
            else ""
        )
        ebpf_line = (
            f"Merbridge pods ({policy.redirector_namespace} -l {agent.selector}) Ready with --mode "
            f"{plane.redirect.mode}{cni} on every eligible node, kernels >= {rules.ebpf.min_kernel}; "
            f"legacy placement, Merbridge's exclusion annotations{validator}"
        )
    gvisor = "" if plane.rules_in_gvisor else f"; not under gVisor ({plane.gvisor_gap})"
    installs = "the mesh's CNI plugin" if rules.iptables.cni_installs_rules else "the init container"
    return [
        "interception modes:",
        f"  ebpf: {ebpf_line}",
        f"  iptables: {installs} installs the rules (the init container: privileged namespaces only)",
        f"  microvm: RuntimeClass {rules.microvm.runtime_class} in the cluster (auto: clusters >= "
        f"{rules.microvm.min_server_version}); the init container installs the rules inside the guest; "
        f"privileged namespaces only{gvisor}",
    ]


__all__ = ["MARKS", "MODES", "describe"]
