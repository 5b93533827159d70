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

from webhook.modes import ebpf, iptables, microvm
from webhook.reasons import Mode

MODES: dict[Mode, ModuleType] = {Mode.EBPF: ebpf, Mode.IPTABLES: iptables, Mode.MICROVM: microvm}

__all__ = ["MODES"]
