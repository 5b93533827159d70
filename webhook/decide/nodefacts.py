"""What the eligible nodes can run, read from what they report: their kernels (the floor
of ebpf and microvm), and the iptables backends their kernels lack (the init container's
rules are installed on the node's kernel).

Derived from an ``Eligibility`` (the nodes a pod may land on, reduced to their distinct
values), never from the nodes one by one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from webhook.decide.scheduling import Eligibility, Platform
from webhook.policy import Firewall, IptablesRules
from webhook.policy import Interception as InterceptionRules
from webhook.versions import Kernel, parse_kernel


@dataclass(frozen=True, slots=True)
class KernelFacts:
    lowest: Kernel | None
    lowest_raw: str | None
    unknown: str | None  # why the kernel is unknown, or None
    ebpf: bool  # every eligible kernel is at least ebpf.minKernel or matches a capable pattern


def kernel_facts(elig: Eligibility, rules: InterceptionRules) -> KernelFacts:
    """Worked out once per Eligibility and the policy's kernel rules, and kept with it."""
    key = ("kernels", rules.ebpf.min_kernel, rules.ebpf.capable_kernels)
    found = elig.derived.get(key)
    if not isinstance(found, KernelFacts):
        found = elig.derived[key] = _kernel_facts(elig, rules)
    return found


def _kernel_facts(elig: Eligibility, rules: InterceptionRules) -> KernelFacts:
    if elig.count == 0:
        return KernelFacts(None, None, "no eligible node is known", False)
    parsed: list[tuple[Kernel, str]] = []
    for raw in elig.kernels:
        kernel = parse_kernel(raw)
        if kernel is None:
            why = "an eligible node reports no kernel" if raw is None else f"kernel {raw!r} cannot be read"
            return KernelFacts(None, None, why, False)
        parsed.append((kernel, raw))  # type: ignore[arg-type]
    lowest, lowest_raw = min(parsed)
    ebpf = all(
        k >= rules.ebpf.min_kernel or any(fnmatchcase(raw, p) for p in rules.ebpf.capable_kernels)
        for k, raw in parsed
    )
    return KernelFacts(lowest, lowest_raw, None, ebpf)


@dataclass(frozen=True, slots=True)
class FirewallFacts:
    """The eligible nodes known to lack each iptables backend (by the policy's
    ``interception.iptables.nodesWithout``), as the platforms they report."""

    missing: Mapping[Firewall, tuple[Platform, ...]]

    def lacking(self, backend: Firewall) -> tuple[Platform, ...]:
        return self.missing.get(backend, ())

    def has_all(self, backend: Firewall) -> bool:
        """No eligible node is known to lack ``backend``."""
        return not self.missing.get(backend)


def firewall_facts(elig: Eligibility, rules: IptablesRules) -> FirewallFacts:
    """Worked out once per distinct platform of the eligible nodes, and kept with the
    Eligibility (which every pod of the same scheduling constraints shares)."""
    key = ("firewall", rules.nodes_without)
    found = elig.derived.get(key)
    if isinstance(found, FirewallFacts):
        return found
    missing: dict[Firewall, list[Platform]] = {}
    for platform in elig.platforms:
        for rule in rules.nodes_without:
            if rule.matches(platform.os_image, platform.kubelet, platform.kernel):
                lacking = missing.setdefault(rule.backend, [])
                if platform not in lacking:
                    lacking.append(platform)
    facts = FirewallFacts({backend: tuple(found) for backend, found in missing.items()})
    elig.derived[key] = facts
    return facts
