"""What the eligible nodes can run, read from what they report: their kernels (the floor
of ebpf and microvm).

Derived from an ``Eligibility`` (the nodes a pod may land on, reduced to their distinct
values), never from the nodes one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from webhook.decide.scheduling import Eligibility
from webhook.policy import Interception as InterceptionRules
from webhook.versions import Kernel, parse_kernel


@dataclass(frozen=True, slots=True)
class KernelFacts:
    lowest: Kernel | None
    lowest_raw: str | None
    unknown: str | None  # why the kernel is unknown, or None
    ebpf: bool  # every eligible kernel is at least ebpf.minKernel or matches a capable pattern


def kernel_facts(elig: Eligibility, rules: InterceptionRules) -> KernelFacts:
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
