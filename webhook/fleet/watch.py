"""``serve``'s view of the fleet: a watched cache of every pod, audited on a schedule, and
the gauges an alert fires on (``mesh_injector_fleet_pods{namespace,state,reason}``).

Each pod is kept only as what admission reads (its name, labels, annotations, owners and
spec; of its status the phase and start time, no managedFields); what the pods of one template share is
kept once, as compact JSON; finished pods are not kept at all. Every ``interval`` seconds
the cache is audited with the same ``audit`` the CLI runs, against the snapshot and policy
the webhook serves with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from kubernetes import client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from webhook.cluster.snapshot import ClusterSnapshot, parse_time
from webhook.fleet.audit import DEFAULT_TOLERANCE, State, audit_pod, is_live
from webhook.kubeapi import Informer, lister
from webhook.policy import Policy

log = logging.getLogger("mesh_injector.fleet")
# what pods of one template share (kept once), and what each pod has of its own
_SHARED_META = ("namespace", "generateName", "labels", "annotations", "ownerReferences")
EXPORTED = (State.MISSED, State.STALE)


class SlimPod(NamedTuple):
    """A pod as the watch keeps it: the part its template's pods share (JSON, interned), and
    its own name, node, phase, deletion mark and start time (seconds since the epoch)."""

    shared: bytes
    name: str
    node: str | None
    phase: str | None
    deleting: str | None
    started: float | None = None


class PodStore:
    """Reduces pods to ``SlimPod``: pods of one ReplicaSet (the same labels, annotations,
    owners and spec but for the node) hold one copy of what they share."""

    def __init__(self) -> None:
        self._shared: dict[bytes, bytes] = {}

    def slim(self, obj: Mapping[str, Any]) -> SlimPod | None:
        """What admission reads of a pod; ``None`` for a pod that finished (not kept)."""
        status = obj.get("status") or {}
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            return None
        started = parse_time(status.get("startTime"))
        meta = obj.get("metadata") or {}
        spec = dict(obj.get("spec") or {})
        node = spec.pop("nodeName", None)
        shared = orjson.dumps({"metadata": {k: meta[k] for k in _SHARED_META if k in meta}, "spec": spec})
        shared = self._shared.setdefault(shared, shared)
        return SlimPod(
            shared,
            str(meta.get("name") or ""),
            node,
            phase,
            meta.get("deletionTimestamp"),
            started.timestamp() if started is not None else None,
        )

    def forget_unused(self, live: list[SlimPod]) -> None:
        """Drop shared parts no pod refers to any more."""
        used = {id(p.shared) for p in live}
        self._shared = {k: v for k, v in self._shared.items() if id(v) in used}


def expand(pods: list[SlimPod]) -> Iterator[dict[str, Any]]:
    """The pods as objects again (each shared part decoded once; admission does not change
    what it is given, so pods of one template share their decoded parts)."""
    decoded: dict[int, dict[str, Any]] = {}
    for p in pods:
        base = decoded.get(id(p.shared))
        if base is None:
            base = decoded[id(p.shared)] = orjson.loads(p.shared)
        meta = {**base["metadata"], "name": p.name}
        if p.deleting:
            meta["deletionTimestamp"] = p.deleting
        spec = {**base["spec"], "nodeName": p.node} if p.node else base["spec"]
        status: dict[str, Any] = {"phase": p.phase} if p.phase else {}
        if p.started is not None:
            status["startTime"] = datetime.fromtimestamp(p.started, UTC).isoformat()
        yield {"metadata": meta, "spec": spec, "status": status}


Counts = dict[tuple[str, str, str], int]  # (namespace, state, reason) -> pods


def count_states(pods: list[SlimPod], snapshot: ClusterSnapshot, policy: Policy, tolerance: float) -> Counts:
    """The live pods that missed their injection or whose injection is stale, counted by
    namespace, state and reason. Pods that share their template, node and phase, and started
    on the same side of their node's redirector's start, get the same answer (the name only
    names them), so one of each group is audited and counted for all."""
    groups: dict[tuple[int, str | None, str | None, str | None, bool], list[SlimPod]] = {}
    for p in pods:
        agent = snapshot.redirector_starts.get(p.node) if p.node else None
        before = agent is not None and p.started is not None and p.started <= agent.timestamp()
        groups.setdefault((id(p.shared), p.node, p.phase, p.deleting, before), []).append(p)
    counts: Counts = {}
    for members, pod in zip(groups.values(), expand([m[0] for m in groups.values()]), strict=True):
        if not is_live(pod):
            continue
        found = audit_pod(pod, snapshot, policy, tolerance=tolerance)
        if found.state in EXPORTED:
            key = (found.namespace, found.state.value, found.reason)
            counts[key] = counts.get(key, 0) + len(members)
    return counts


class FleetWatch(Collector):
    def __init__(
        self,
        api: client.ApiClient,
        snapshot: Callable[[], ClusterSnapshot],
        policy: Policy,
        *,
        interval: float = 300.0,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self._stop = threading.Event()
        self.store = PodStore()
        self.pods = Informer("pods", lister(api, "/api/v1/pods"), self.store.slim, stop=self._stop)
        self._snapshot = snapshot
        self._policy = policy
        self._interval = interval
        self._tolerance = tolerance
        self.counts: Counts = {}
        self.audited_at = 0.0
        self.audit_seconds = 0.0
        self._threads: list[threading.Thread] = []

    def refresh(self) -> None:
        """Audit the cache (see ``count_states``)."""
        started = time.monotonic()
        cached: list[SlimPod] = self.pods.values()
        self.counts = count_states(cached, self._snapshot(), self._policy, self._tolerance)
        self.audited_at = time.time()
        self.audit_seconds = time.monotonic() - started
        self.store.forget_unused(cached)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pods.synced:
                try:
                    self.refresh()
                except Exception:  # the gauges keep their last values; the webhook is unaffected
                    log.exception("fleet audit failed")
                wait = self._interval
            else:
                wait = 1.0
            self._stop.wait(wait)

    def start(self) -> None:
        for name, target in (("fleet-pods", self.pods.run), ("fleet-audit", self._run)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pods = GaugeMetricFamily(
            "mesh_injector_fleet_pods",
            "Running pods that missed their injection or whose injection is stale, by namespace, "
            "state (missed, stale) and reason (the first field that differs, for stale)",
            labels=["namespace", "state", "reason"],
        )
        for (namespace, state, reason), n in sorted(self.counts.items()):
            pods.add_metric([namespace, state, reason], n)
        yield pods
        yield GaugeMetricFamily(
            "mesh_injector_fleet_audit_timestamp_seconds",
            "When the watched pods were last audited (0: not yet)",
            value=self.audited_at,
        )
        yield GaugeMetricFamily(
            "mesh_injector_fleet_watched_pods", "Pods in the watched cache", value=len(self.pods.values())
        )
