"""Proxy CPU and memory: annotation > observed > profile.

Observed (SPEC's formula, every constant from ``policy.sizing``)::

    request.cpu    = p90(cpu, decay-weighted)    * (1 + margin)
    request.memory = p95(memory, decay-weighted) * (1 + margin)
    limit.memory   = limitFactor * max(memory)   -> OOM in oomLookback: max(*oomFactor, +oomMinIncrease)
    limit.cpu      = limitFactor * max(cpu)      (only when cpuLimits is true)
    then clamp every value to [floor, cap], raise a limit to its request, round CPU up to
    1m and memory up to 1Mi.

Annotation values override field by field and are not clamped (the pod's owner asked for
them); only a limit below its request is raised to it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from decimal import InvalidOperation

from webhook.core import MI, PREFIX, ProxyResources, cpu_str, memory_str
from webhook.policy import Amounts, Policy
from webhook.quantity import parse_quantity
from webhook.reasons import ResourceSource
from webhook.usage.samples import UsageSummary

_ABSURD = 1e15  # no proxy needs 10^15 cores or bytes; also keeps inf/overflow out
GI = 1024 * MI
_FIELDS = {
    "proxy-cpu-request": ("cpu_request", "cpu"),
    "proxy-cpu-limit": ("cpu_limit", "cpu"),
    "proxy-memory-request": ("memory_request", "memory"),
    "proxy-memory-limit": ("memory_limit", "memory"),
}


def round_cpu(cores: float) -> float:
    return math.ceil(round(cores * 1000, 6)) / 1000


def round_memory(nbytes: float) -> int:
    return math.ceil(round(nbytes / MI, 6)) * MI


def human_duration(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 60:.0f}m"


def enough_samples(summary: UsageSummary | None, policy: Policy) -> bool:
    s = policy.sizing
    return summary is not None and summary.count >= s.min_samples and summary.span >= s.min_span


def _clamp(value: float, lo: float | None, hi: float | None) -> float:
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    return value


def from_observed(summary: UsageSummary, policy: Policy) -> ProxyResources:
    s = policy.sizing
    cpu_req = summary.cpu_p * (1 + s.margin)
    mem_req = summary.memory_p * (1 + s.margin)
    mem_lim = s.limit_factor * summary.memory_max
    if summary.oom_recent:
        mem_lim = max(mem_lim * s.oom_factor, mem_lim + s.oom_min_increase)
    cpu_lim = s.limit_factor * summary.cpu_max if s.cpu_limits else None
    cpu_req = _clamp(cpu_req, s.floor.cpu, s.cap.cpu)
    mem_req = _clamp(mem_req, s.floor.memory, s.cap.memory)
    mem_lim = max(_clamp(mem_lim, s.floor.memory, s.cap.memory), mem_req)
    if cpu_lim is not None:
        cpu_lim = max(_clamp(cpu_lim, s.floor.cpu, s.cap.cpu), cpu_req)
    detail = (
        f"observed: {summary.count} samples over {human_duration(summary.span)} "
        f"(window {human_duration(s.window)}, half-life {human_duration(s.half_life)}), "
        f"cpu p{s.cpu_percentile:g} {cpu_str(summary.cpu_p)} and memory p{s.memory_percentile:g} "
        f"{memory_str(summary.memory_p)} +{s.margin:.0%}, memory limit {s.limit_factor:g}x max "
        f"{memory_str(summary.memory_max)}"
        + (" raised after a recent OOM kill" if summary.oom_recent else "")
    )
    return ProxyResources(
        cpu_request=round_cpu(cpu_req),
        memory_request=round_memory(mem_req),
        cpu_limit=round_cpu(cpu_lim) if cpu_lim is not None else None,
        memory_limit=round_memory(mem_lim),
        source=ResourceSource.OBSERVED,
        detail=detail,
    )


@functools.lru_cache(maxsize=256)  # a pure function of a few profiles and reasons
def from_profile(amounts: tuple[Amounts, Amounts], name: str, why: str) -> ProxyResources:
    requests, limits = amounts
    assert requests.cpu is not None and requests.memory is not None  # checked by the policy loader
    return ProxyResources(
        cpu_request=round_cpu(requests.cpu),
        memory_request=round_memory(requests.memory),
        cpu_limit=round_cpu(max(limits.cpu, requests.cpu)) if limits.cpu is not None else None,
        memory_limit=round_memory(max(limits.memory, requests.memory)) if limits.memory is not None else None,
        source=ResourceSource.PROFILE,
        detail=f"profile {name!r} ({why})",
    )


def annotation_overrides(annotations: Mapping[str, object]) -> tuple[dict[str, float], list[str]]:
    """Parsed ``proxy-*`` annotations, and a warning for each that is not a quantity."""
    values: dict[str, float] = {}
    problems: list[str] = []
    for suffix, (attr, kind) in _FIELDS.items():
        raw = annotations.get(PREFIX + suffix)
        if raw is None:
            continue
        try:
            value = float(parse_quantity(raw))
            if not 0 < value < _ABSURD:
                raise ValueError
        except (ValueError, InvalidOperation, TypeError):
            problems.append(
                f"annotation {PREFIX}{suffix}: {raw!r} is not a positive {kind} quantity; ignored"
            )
            continue
        values[attr] = value
    return values, problems


def _reconcile(request: float, limit: float | None, only_limit_set: bool) -> tuple[float, float | None]:
    """A limit below its request is invalid: the side the pod's owner set wins."""
    if limit is None or limit >= request:
        return request, limit
    return (limit, limit) if only_limit_set else (request, request)


def apply_overrides(base: ProxyResources, overrides: Mapping[str, float]) -> ProxyResources:
    if not overrides:
        return base
    cpu_req = overrides.get("cpu_request", base.cpu_request)
    mem_req = overrides.get("memory_request", base.memory_request)
    cpu_lim = overrides.get("cpu_limit", base.cpu_limit)
    mem_lim = overrides.get("memory_limit", base.memory_limit)
    cpu_req, cpu_lim = _reconcile(
        cpu_req, cpu_lim, "cpu_limit" in overrides and "cpu_request" not in overrides
    )
    mem_req, mem_lim = _reconcile(
        mem_req, mem_lim, "memory_limit" in overrides and "memory_request" not in overrides
    )
    names = ", ".join(sorted(k.replace("_", "-") for k in overrides))
    return ProxyResources(
        cpu_request=round_cpu(cpu_req),
        memory_request=round_memory(mem_req),
        cpu_limit=round_cpu(cpu_lim) if cpu_lim is not None else None,
        memory_limit=round_memory(mem_lim) if mem_lim is not None else None,
        source=ResourceSource.ANNOTATION,
        detail=f"annotation ({names}) over {base.detail}",
    )
