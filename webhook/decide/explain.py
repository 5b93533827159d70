"""Lines of the explanation that describe what the decision looked at."""

from __future__ import annotations

from webhook.cluster.snapshot import ClusterSnapshot
from webhook.decide.nodefacts import KernelFacts
from webhook.decide.scheduling import Eligibility
from webhook.podsecurity import Levels
from webhook.policy import Policy


def pod_security_line(levels: Levels) -> str:
    extra = "".join(f"; {k} {v}" for k, v in (("warn", levels.warn), ("audit", levels.audit)) if v)
    return (
        f"pod security: enforce {levels.enforce} ({levels.source}, version {levels.enforce_version}){extra}"
    )


def kernel_line(elig: Eligibility, kf: KernelFacts) -> str:
    if kf.unknown:
        return f"kernel: unknown ({kf.unknown})"
    distinct = len(elig.kernels)
    capable = "yes" if kf.ebpf else "no"
    return f"kernel: lowest {kf.lowest_raw} among {distinct} distinct kernel(s); eBPF-capable: {capable}"


def nodes_line(elig: Eligibility) -> str:
    excluded = ", ".join(f"{n} {why}" for why, n in elig.excluded.items())
    sample = f" (e.g. {', '.join(elig.sample)})" if elig.sample else ""
    return f"eligible nodes: {elig.count} of {elig.total}{sample} by {elig.basis}" + (
        f"; excluded: {excluded}" if excluded else ""
    )


def redirector_line(elig: Eligibility, snapshot: ClusterSnapshot, policy: Policy) -> str:
    """The eBPF redirector (Merbridge) on the eligible nodes, by state."""
    rules = policy.interception.ebpf.redirector
    where = f"{policy.redirector_namespace} -l {rules.selector}"
    if not snapshot.redirectors:
        return f"redirector: no Merbridge pod known ({where})"
    parts = []
    for state, count, node in elig.redirectors:
        if state is None:
            what = "none"
        else:
            flags = f"--mode {state.mode}" + (", --cni-mode" if state.cni_mode else "")
            what = f"{'Ready' if state.ready else 'not Ready'} ({flags})"
        parts.append(f"{what} on {count} (e.g. {node})")
    return (
        f"redirector: Merbridge ({where}): " + "; ".join(parts) if parts else "redirector: no eligible node"
    )
