"""Interception modes: the mechanisms that send a meshed pod's traffic through its proxy.

One module per mode (``ebpf``, ``iptables``, ``microvm``, and ``none`` for a pod whose
flavour says nothing of its traffic needs redirecting), each with the same small surface
(``webhook.modes.base``): what it needs (``NEEDS``), whether that is known to be present
for a pod (``missing``), whether the namespace admits what it adds (``blocked``), what it
adds (``interception``) and how it is described (``supported_text`` for a pod, ``describe``
for ``policy check``). ``choice`` holds the
decision table that picks among them, and ``firewall`` the iptables backend the init
container's rules are then installed with. Adding a mode is one module here, its entry in
``MODES`` and its row in the table.
"""

from __future__ import annotations

from types import ModuleType

from webhook.dataplane import flavour
from webhook.modes import ebpf, iptables, microvm, none
from webhook.policy import Policy
from webhook.reasons import Mode

MODES: dict[Mode, ModuleType] = {
    Mode.EBPF: ebpf,
    Mode.IPTABLES: iptables,
    Mode.MICROVM: microvm,
    Mode.NONE: none,
}
# the labels and annotations the modes write beside the flavour's
MARKS = frozenset(mark for module in MODES.values() for mark in getattr(module, "MARKS", ()))


def describe(policy: Policy) -> list[str]:
    """What each mode needs in the cluster and adds to a pod of the policy's flavour, for
    ``policy check``."""
    plane = flavour(policy.proxy.flavour)
    return [
        "interception modes:",
        *(f"  {mode.value}: {m.describe(policy, plane)}" for mode, m in MODES.items()),
    ]


__all__ = ["MARKS", "MODES", "describe"]
