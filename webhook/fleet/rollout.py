"""Restart the workloads an audit found missed or stale, at a pace.

A restart is what ``kubectl rollout restart`` does: the pod template gains the annotation
``kubectl.kubernetes.io/restartedAt``, and the workload's own controller replaces its pods
(through admission, so they are meshed as they would be now), by its own update strategy.

The pace:
- at most ``max_in_flight`` workloads are rolling at once; each is waited on until it is
  available again (what ``kubectl rollout status`` waits for) before the next one starts;
- a workload is started only when every PodDisruptionBudget that selects its pods allows
  the disruption its update strategy causes (taking away what workloads in flight may use
  of the same budget); otherwise it waits;
- a workload already rolling (an earlier run interrupted) is waited on, never restarted
  again, so a run can be stopped and started again at any time;
- bare pods, Jobs, CronJobs, ReplicaSets without a Deployment and ``OnDelete`` strategies
  are reported and left alone;
- a workload that does not become available within ``timeout`` stops the run: nothing
  more is restarted while something is wrong.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from webhook.fleet.audit import WorkloadAudit
from webhook.workload import WorkloadKey

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class Fleet(Protocol):
    """The part of the cluster a rollout reads and writes."""

    def workload(self, key: WorkloadKey) -> Mapping[str, Any] | None: ...

    def restart(self, key: WorkloadKey, at: str) -> None: ...

    def budgets(self, namespace: str) -> Sequence[Mapping[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Step:
    workload: WorkloadKey
    why: str  # what the audit found
    left_alone: str | None = None  # why it is not restarted


def _why(w: WorkloadAudit) -> str:
    pods = ", ".join(f"{n} {s.value}" for s in (w.state,) if (n := w.count(s)))
    fields = w.fields()
    return pods + (f" ({', '.join(fields)})" if fields else "")


_LEFT_ALONE = {
    "Pod": "a bare pod has no controller to replace it: delete and create it again",
    "Job": "a Job's pods run to completion: its next run is meshed as admission decides then",
    "CronJob": "a CronJob's next Job is meshed as admission decides then",
    "ReplicaSet": "a ReplicaSet without a Deployment cannot be restarted: scale it down and up",
}


def plan(workloads: Sequence[WorkloadAudit]) -> list[Step]:
    """One step per workload that has a missed or stale pod, in the audit's order."""
    out = []
    for w in workloads:
        if w.restartable:
            out.append(Step(w.workload, _why(w)))
        else:
            reason = _LEFT_ALONE.get(
                w.workload.kind, f"a {w.workload.kind} is not restarted by mesh-injector"
            )
            out.append(Step(w.workload, _why(w), left_alone=reason))
    return out


# --- what a workload's object says ---------------------------------------------------


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _scaled(value: object, total: int, *, round_up: bool, default: int) -> int:
    """An IntOrString of an update strategy (``1`` or ``"25%"``) against ``total``."""
    if isinstance(value, str) and value.endswith("%"):
        try:
            share = float(value[:-1]) / 100 * total
        except ValueError:
            return default
        return math.ceil(share) if round_up else math.floor(share)
    return _int(value, default)


def unavailable_at_once(obj: Mapping[str, Any]) -> int | None:
    """How many of its pods the workload's update takes down at a time; ``None`` when a
    restart replaces nothing (an ``OnDelete`` strategy)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    replicas = _int(spec.get("replicas"), 1)
    if kind == "Deployment":
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            return replicas
        rolling = strategy.get("rollingUpdate") or {}
        surge = _scaled(rolling.get("maxSurge", "25%"), replicas, round_up=True, default=1)
        down = _scaled(rolling.get("maxUnavailable", "25%"), replicas, round_up=False, default=1)
        return 1 if surge == 0 and down == 0 else down
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type") == "OnDelete":
        return None
    if kind == "DaemonSet":
        status = obj.get("status") or {}
        nodes = _int(status.get("desiredNumberScheduled"))
        rolling = strategy.get("rollingUpdate") or {}
        return max(1, _scaled(rolling.get("maxUnavailable", 1), nodes, round_up=False, default=1))
    return 1  # a StatefulSet replaces one pod at a time


def rolled_out(obj: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the workload's latest template is out and available, as ``kubectl rollout
    status`` judges it, and a line saying where it is."""
    kind = obj.get("kind")
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if _int(status.get("observedGeneration")) < _int(meta.get("generation")):
        return False, "waiting for the controller to see the change"
    if kind == "Deployment":
        want = _int(spec.get("replicas"), 1)
        updated, total = _int(status.get("updatedReplicas")), _int(status.get("replicas"))
        available = _int(status.get("availableReplicas"))
        text = f"{updated}/{want} updated, {available} available, {total} in all"
        return updated >= want and total == updated and available >= updated, text
    if kind == "StatefulSet":
        want = _int(spec.get("replicas"), 1)
        ready, updated = _int(status.get("readyReplicas")), _int(status.get("updatedReplicas"))
        same = status.get("updateRevision") == status.get("currentRevision")
        return ready >= want and (same or updated >= want), f"{updated}/{want} updated, {ready} ready"
    if kind == "DaemonSet":
        want = _int(status.get("desiredNumberScheduled"))
        updated, available = _int(status.get("updatedNumberScheduled")), _int(status.get("numberAvailable"))
        return updated >= want and available >= want, f"{updated}/{want} updated, {available} available"
    return True, ""


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against ``labels``; an empty
    selector selects everything, as a PodDisruptionBudget's does (policy/v1)."""
    if not isinstance(selector, dict):
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def budgets_of(obj: Mapping[str, Any], budgets: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The PodDisruptionBudgets that select the workload's pods."""
    template = (obj.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    return [b for b in budgets if _selects((b.get("spec") or {}).get("selector"), labels)]


def _budget_name(b: Mapping[str, Any]) -> str:
    return str((b.get("metadata") or {}).get("name"))


# --- the run -----------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    restarted: list[WorkloadKey] = field(default_factory=list)
    waited: list[WorkloadKey] = field(default_factory=list)  # already rolling: waited on only
    left_alone: list[tuple[WorkloadKey, str]] = field(default_factory=list)
    failed: list[tuple[WorkloadKey, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(slots=True)
class _Flight:
    started: float
    down: int
    budgets: tuple[str, ...]
    restarted: bool


def run(
    fleet: Fleet,
    steps: Sequence[Step],
    *,
    max_in_flight: int = 1,
    timeout: float = 600.0,
    poll: float = 2.0,
    say: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now_text: Callable[[], str] = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
) -> Result:
    result = Result()
    queue: list[Step] = []
    for step in steps:
        if step.left_alone:
            result.left_alone.append((step.workload, step.left_alone))
            say(f"left alone  {step.workload}: {step.left_alone}")
        else:
            queue.append(step)
    total = len(queue)
    flying: dict[WorkloadKey, _Flight] = {}
    blocked_since: float | None = None
    done = 0
    while queue or flying:
        for key, flight in list(flying.items()):
            obj = fleet.workload(key)
            if obj is None:
                say(f"gone        {key}: deleted while rolling out")
                del flying[key]
                continue
            finished, text = rolled_out(obj)
            if finished:
                done += 1
                say(f"[{done}/{total}] available {key}: {text} after {clock() - flight.started:.0f}s")
                del flying[key]
            elif clock() - flight.started > timeout:
                result.failed.append((key, f"not available after {timeout:.0f}s: {text}"))
                say(
                    f"timed out   {key}: not available after {timeout:.0f}s ({text}); nothing more is started"
                )
                del flying[key]
                queue.clear()
        if result.failed:
            if not flying:
                break
            sleep(poll)
            continue
        while queue and len(flying) < max_in_flight:
            step = queue[0]
            key = step.workload
            obj = fleet.workload(key)
            if obj is None:
                queue.pop(0)
                result.left_alone.append((key, "not found"))
                say(f"left alone  {key}: not found")
                continue
            down = unavailable_at_once(obj)
            if down is None:
                queue.pop(0)
                why = "its updateStrategy is OnDelete: pods are replaced only when deleted"
                result.left_alone.append((key, why))
                say(f"left alone  {key}: {why}")
                continue
            matching = budgets_of(obj, fleet.budgets(key.namespace))
            finished, text = rolled_out(obj)
            if not finished:  # rolling already (an earlier run, or someone else): wait on it
                queue.pop(0)
                flying[key] = _Flight(clock(), down, tuple(_budget_name(b) for b in matching), False)
                result.waited.append(key)
                say(f"waiting     {key}: already rolling out ({text})")
                continue
            short = []
            for b in matching:
                name = _budget_name(b)
                allowed = _int((b.get("status") or {}).get("disruptionsAllowed"))
                used = sum(f.down for f in flying.values() if name in f.budgets)
                if allowed - used < down:
                    short.append(
                        f"PodDisruptionBudget {name} allows {max(0, allowed - used)}, the update takes {down}"
                    )
            if short:
                if blocked_since is None:
                    blocked_since = clock()
                    say(f"holding     {key}: {'; '.join(short)}")
                if not flying and clock() - blocked_since > timeout:
                    queue.pop(0)
                    result.failed.append((key, "; ".join(short)))
                    say(f"timed out   {key}: {'; '.join(short)}; nothing more is started")
                    queue.clear()
                break
            blocked_since = None
            queue.pop(0)
            fleet.restart(key, now_text())
            flying[key] = _Flight(clock(), down, tuple(_budget_name(b) for b in matching), True)
            result.restarted.append(key)
            budgets = f"; within {', '.join(_budget_name(b) for b in matching)}" if matching else ""
            say(f"restarting  {key}: {step.why}{budgets}")
        if queue or flying:
            sleep(poll)
    return result
