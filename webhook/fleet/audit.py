"""Which running pods missed their injection or outgrew it, decided by admission itself.

Every pod is sent through ``admit`` as if it were created now (re-admission is
strip-and-redo, so a pod that carries our proxy is decided on what its user wrote). The
outcome is compared with what the pod carries:

- **current**: meshed, and admission would give it the same proxy now;
- **missed**: admission would mesh it now, and it has no proxy of ours (created while the
  webhook was down, or skipped then for a reason that no longer holds);
- **stale**: it carries our proxy and admission would now give it a different one, or none;
  the fields that differ are named (flavour, the mesh version it was rendered as, proxy
  image, mode, the init container's iptables backend, placement, resources beyond a
  tolerance, RuntimeClass, init container images), also where the injection was edited
  since (its proxy's image changed by hand: compared with a fresh injection); or it is an
  ebpf pod that its node's Merbridge no longer redirects (``redirector-restarted``:
  Merbridge started after the pod, and does not take that proxy's pods back);
- **other-mesh**: another mesh owns it;
- **out-of-scope**: not meshed, and admission would not mesh it now (the reason says why).

Pods are grouped by the workload that owns them (the same key as observed usage: a
Deployment for its ReplicaSets' pods, a CronJob for its Jobs' pods).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from webhook.admission import admit
from webhook.cluster.snapshot import ClusterSnapshot, parse_time
from webhook.core import ANN_SKIP, ANN_STATUS
from webhook.dataplane import FLAVOURS
from webhook.modes.ebpf import lost_on_restart
from webhook.patch.inject import read_status
from webhook.policy import Policy
from webhook.quantity import parse_quantity
from webhook.reasons import Skip
from webhook.workload import WorkloadKey, workload_key

DEFAULT_TOLERANCE = 0.2  # proxy resources within 20% of what admission would set are current
RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")


class State(StrEnum):
    MISSED = "missed"
    STALE = "stale"
    CURRENT = "current"
    OTHER_MESH = "other-mesh"
    OUT_OF_SCOPE = "out-of-scope"


# A workload is as bad as its worst pod.
_SEVERITY = {s: i for i, s in enumerate(State)}
_OTHER_MESH_SKIPS = frozenset({Skip.OTHER_MESH, Skip.OTHER_MESH_OPT_OUT})


@dataclass(frozen=True, slots=True)
class Change:
    """One field of the injection that admission would set differently now."""

    # a slug: flavour, version, proxy-image, mode, firewall, placement, resources, runtime-class,
    # init-image, meshed, redirector-restarted, proxy (edited since it was injected)
    field: str
    has: str
    wants: str

    def text(self) -> str:
        return f"{self.field}: {self.has} -> {self.wants}"


@dataclass(frozen=True, slots=True)
class PodAudit:
    namespace: str
    name: str
    workload: WorkloadKey
    state: State
    reason: str  # a bounded slug (a metrics label)
    detail: str  # what a person reads
    changes: tuple[Change, ...] = ()


@dataclass(slots=True)
class WorkloadAudit:
    workload: WorkloadKey
    pods: list[PodAudit] = field(default_factory=list)

    @property
    def state(self) -> State:
        return min((p.state for p in self.pods), key=_SEVERITY.__getitem__)

    @property
    def restartable(self) -> bool:
        return self.workload.kind in RESTARTABLE

    def count(self, state: State) -> int:
        return sum(1 for p in self.pods if p.state is state)

    def fields(self) -> list[str]:
        return sorted({c.field for p in self.pods for c in p.changes})

    def record(self) -> dict[str, Any]:
        return {
            "namespace": self.workload.namespace,
            "kind": self.workload.kind,
            "name": self.workload.name,
            "state": self.state.value,
            "pods": {s.value: n for s in State if (n := self.count(s))},
            "fields": self.fields(),
            "restartable": self.restartable,
            "podDetails": [
                {
                    "name": p.name,
                    "state": p.state.value,
                    "reason": p.reason,
                    "detail": p.detail,
                    "changes": [{"field": c.field, "has": c.has, "wants": c.wants} for c in p.changes],
                }
                for p in self.pods
            ],
        }


@dataclass(slots=True)
class Report:
    workloads: list[WorkloadAudit]

    def pods(self) -> Iterable[PodAudit]:
        return (p for w in self.workloads for p in w.pods)

    def totals(self) -> dict[State, int]:
        out = dict.fromkeys(State, 0)
        for p in self.pods():
            out[p.state] += 1
        return out

    def needing_restart(self) -> list[WorkloadAudit]:
        return [w for w in self.workloads if w.state in (State.MISSED, State.STALE)]


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    return meta if isinstance(meta, dict) else {}


def is_live(pod: Mapping[str, Any]) -> bool:
    """A pod that still runs, or will: not finished, not being deleted."""
    status = pod.get("status")
    phase = status.get("phase") if isinstance(status, dict) else None
    return phase not in ("Succeeded", "Failed") and not _meta(pod).get("deletionTimestamp")


def _proxy(pod: Mapping[str, Any], status: Mapping[str, Any]) -> Mapping[str, Any]:
    plane = FLAVOURS.get(str(status.get("flavour")))
    if plane is None:
        return {}
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or ():
            if isinstance(c, dict) and c.get("name") == plane.proxy_name:
                return c
    return {}


def _init_images(pod: Mapping[str, Any], status: Mapping[str, Any], proxy: str) -> dict[str, str]:
    listed = set(status.get("initContainers") or ()) - {proxy}
    spec = pod.get("spec") or {}
    return {
        c["name"]: str(c.get("image"))
        for c in spec.get("initContainers") or ()
        if isinstance(c, dict) and c.get("name") in listed
    }


def _quantity(value: object) -> Decimal | None:
    try:
        return parse_quantity(value) if value is not None else None
    except (ValueError, TypeError, ArithmeticError):
        return None


def _resource_changes(
    has: Mapping[str, Any], wants: Mapping[str, Any], tolerance: float
) -> list[tuple[str, str, str]]:
    """(``requests.cpu``, what the pod has, what admission would set) for every request and
    limit further apart than the tolerance (relative to what admission would set), or set
    on one side only."""
    out = []
    for kind in ("requests", "limits"):
        a, b = has.get(kind) or {}, wants.get(kind) or {}
        for name in ("cpu", "memory"):
            qa, qb = _quantity(a.get(name)), _quantity(b.get(name))
            if qa is None and qb is None:
                continue
            if qa is None or qb is None or abs(qa - qb) > Decimal(str(tolerance)) * qb:
                out.append((f"{kind}.{name}", str(a.get(name, "unset")), str(b.get(name, "unset"))))
    return out


def changes(live: Mapping[str, Any], wanted: Mapping[str, Any], tolerance: float) -> list[Change]:
    """What admission would set differently on ``live`` (both carry our status)."""
    has, wants = read_status(live) or {}, read_status(wanted) or {}
    out: list[Change] = []

    def compare(name: str, a: object, b: object) -> None:
        if a != b:
            out.append(
                Change(name, str(a) if a is not None else "unset", str(b) if b is not None else "unset")
            )

    def recorded(name: str, a: object, b: object) -> None:
        """What an injection records of itself, compared where both sides record it: an
        injection made before it was recorded is judged by what it carries (its images, its
        mode), not flagged for the record alone."""
        if a is not None and b is not None:
            compare(name, a, b)

    compare("flavour", has.get("flavour"), wants.get("flavour"))
    recorded("version", has.get("meshVersion"), wants.get("meshVersion"))
    pa, pb = _proxy(live, has), _proxy(wanted, wants)
    compare("proxy-image", pa.get("image"), pb.get("image"))
    compare("mode", has.get("mode"), wants.get("mode"))
    recorded("firewall", has.get("firewall"), wants.get("firewall"))
    place = {True: "native sidecar", False: "regular container"}
    compare("placement", place.get(has.get("nativeSidecar")), place.get(wants.get("nativeSidecar")))
    if has.get("flavour") == wants.get("flavour"):
        moved = _resource_changes(pa.get("resources") or {}, pb.get("resources") or {}, tolerance)
        if moved:
            has_text = ", ".join(f"{field} {value}" for field, value, _ in moved)
            out.append(
                Change("resources", has_text, ", ".join(f"{field} {value}" for field, _, value in moved))
            )
    compare(
        "runtime-class",
        (live.get("spec") or {}).get("runtimeClassName"),
        wanted["spec"].get("runtimeClassName"),
    )
    ia = _init_images(live, has, str(pa.get("name")))
    ib = _init_images(wanted, wants, str(pb.get("name")))
    if ia != ib:
        compare(
            "init-image",
            ", ".join(f"{k}={v}" for k, v in sorted(ia.items())) or "none",
            ", ".join(f"{k}={v}" for k, v in sorted(ib.items())) or "none",
        )
    return out


def _edited_injection(
    pod: Mapping[str, Any], snapshot: ClusterSnapshot, policy: Policy, tolerance: float
) -> list[Change]:
    """What differs from a fresh injection, for a pod whose injection was edited since (its
    proxy's image, say): admission leaves such a pod alone (``proxy-already-present``), so it
    is decided again without what the status lists as ours. Empty when that is not meshed."""
    status = read_status(pod) or {}
    meta = dict(_meta(pod))
    added = {k: set(status.get(k) or ()) for k in ("containers", "initContainers", "volumes")}
    spec = dict(pod.get("spec") or {})
    for key, names in added.items():
        if isinstance(spec.get(key), list):
            spec[key] = [c for c in spec[key] if not (isinstance(c, dict) and c.get("name") in names)]
    for key in ("annotations", "labels"):
        listed = set(status.get(key) or ()) | ({ANN_STATUS} if key == "annotations" else set())
        if isinstance(meta.get(key), dict):
            meta[key] = {k: v for k, v in meta[key].items() if k not in listed}
    request = {
        "uid": "audit",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "namespace": str(meta.get("namespace") or "default"),
        "object": {**pod, "metadata": meta, "spec": spec},
    }
    fresh = admit(request, snapshot, policy)
    if not fresh.injected or fresh.pod is None:
        return []
    found = changes(pod, fresh.pod, tolerance)
    return found or [Change("proxy", "changed since it was injected", "as admission adds it")]


def _lost_redirect(pod: Mapping[str, Any], snapshot: ClusterSnapshot) -> Change | None:
    """An ebpf pod of ours that its node's Merbridge no longer redirects (see
    ``modes.ebpf.lost_on_restart``)."""
    status = read_status(pod) or {}
    plane = FLAVOURS.get(str(status.get("flavour")))
    node = (pod.get("spec") or {}).get("nodeName")
    started = parse_time((pod.get("status") or {}).get("startTime"))
    if status.get("mode") != "ebpf" or plane is None or not isinstance(node, str) or started is None:
        return None
    lost = lost_on_restart(plane, node, started, snapshot)
    return Change("redirector-restarted", *lost) if lost is not None else None


def audit_pod(
    pod: Mapping[str, Any], snapshot: ClusterSnapshot, policy: Policy, *, tolerance: float = DEFAULT_TOLERANCE
) -> PodAudit:
    meta = _meta(pod)
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or meta.get("generateName") or "?")
    key = workload_key(pod, namespace)
    request = {
        "uid": "audit",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "namespace": namespace,
        "object": pod,
    }
    outcome = admit(request, snapshot, policy)
    ours = read_status(pod) is not None
    if not outcome.injected:
        skip = outcome.skip
        text = skip.text if skip is not None else "not meshed"
        if skip in _OTHER_MESH_SKIPS:
            return PodAudit(namespace, name, key, State.OTHER_MESH, skip.value if skip else "", text)
        if ours and skip is Skip.PROXY_PRESENT:
            edited = _edited_injection(pod, snapshot, policy, tolerance)
            if edited:  # admission does not take back what was changed since: say what changed
                return PodAudit(
                    namespace, name, key, State.STALE, edited[0].field, "; ".join(c.text() for c in edited),
                    tuple(edited),
                )  # fmt: skip
        if ours:
            change = Change("meshed", "yes", f"no ({skip.value if skip else 'skipped'})")
            return PodAudit(
                namespace, name, key, State.STALE, "meshed", f"would not be meshed now: {text}", (change,)
            )
        return PodAudit(namespace, name, key, State.OUT_OF_SCOPE, skip.value if skip else "", text)
    mode = outcome.mode.value if outcome.mode else "?"
    if not ours:
        earlier = (meta.get("annotations") or {}).get(ANN_SKIP)
        if earlier:
            return PodAudit(
                namespace,
                name,
                key,
                State.MISSED,
                "skipped-earlier",
                f"skipped when created ({earlier}); would be meshed now, mode {mode}",
            )
        return PodAudit(
            namespace,
            name,
            key,
            State.MISSED,
            "not-injected",
            f"has no proxy; would be meshed now, mode {mode}",
        )
    lost = _lost_redirect(pod, snapshot)
    if not outcome.patch and lost is None:
        return PodAudit(namespace, name, key, State.CURRENT, "current", f"meshed, mode {mode}")
    wanted = outcome.pod if outcome.patch else None
    found = changes(pod, wanted, tolerance) if wanted is not None else []
    if lost is not None:  # first: the pod runs beside a proxy nothing sends its traffic to
        found.insert(0, lost)
    if not found:
        return PodAudit(namespace, name, key, State.CURRENT, "current", f"meshed, mode {mode}")
    return PodAudit(
        namespace,
        name,
        key,
        State.STALE,
        found[0].field,
        "; ".join(c.text() for c in found),
        tuple(found),
    )


def audit(
    pods: Iterable[Mapping[str, Any]],
    snapshot: ClusterSnapshot,
    policy: Policy,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Report:
    """Every live pod audited, grouped by workload (sorted by namespace, kind, name)."""
    groups: dict[WorkloadKey, WorkloadAudit] = {}
    for pod in pods:
        if not is_live(pod):
            continue
        found = audit_pod(pod, snapshot, policy, tolerance=tolerance)
        groups.setdefault(found.workload, WorkloadAudit(found.workload)).pods.append(found)
    for group in groups.values():
        group.pods.sort(key=lambda p: p.name)
    return Report([groups[k] for k in sorted(groups)])
