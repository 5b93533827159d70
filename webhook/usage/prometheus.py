"""Observed usage from Prometheus (``--prometheus URL``).

Readings are taken on a fixed grid of ``step`` seconds (multiples of ``step`` since the
epoch), so every replica reads the same points. At start the whole window is read back
(``query_range`` in chunks of at most ``max_points`` points), then each new grid point
once it is ``lag`` seconds old (scrapes land late). The queries (``STEP`` is the step as
a duration, e.g. ``300s``)::

    # CPU cores of each pod's proxy: cAdvisor's counter as a rate over one step
    sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{container="mesh-proxy"}[STEP]))
    # memory working set of each pod's proxy, bytes
    max by (namespace, pod) (container_memory_working_set_bytes{container="mesh-proxy"})
    # OOM kills: the proxy restarted during the step and its last termination was OOMKilled
    (sum by (namespace, pod) (increase(
        kube_pod_container_status_restarts_total{container="mesh-proxy"}[STEP])) > 0)
      and on (namespace, pod)
    (max by (namespace, pod) (kube_pod_container_status_last_terminated_reason{
        container="mesh-proxy", reason="OOMKilled"}) == 1)

and, to join pods to workloads (kube-state-metrics), instant queries over the window::

    max by (namespace, pod, owner_kind, owner_name) (last_over_time(kube_pod_owner[WINDOW]))
    max by (namespace, replicaset, owner_kind, owner_name) (last_over_time(kube_replicaset_owner[WINDOW]))

A pod owned by a ReplicaSet that a Deployment owns counts for the Deployment; a Job named
``<name>-<digits>`` for its CronJob (the rules admission uses); a pod without owner for
itself. A pod that ``kube_pod_owner`` does not know is not counted (``unmatched``).
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson

from webhook.dataplane import PROXY_NAMES
from webhook.policy import Sizing
from webhook.usage.history import UsageHistory
from webhook.usage.samples import UsageSummary, checked_reading, parse_timestamp
from webhook.usage.sources import PollingUsage
from webhook.workload import _CRONJOB_JOB, WorkloadKey

# the proxy container of every flavour: mesh-proxy, linkerd-proxy, istio-proxy
PROXY_RE = "|".join(sorted(PROXY_NAMES))
_PROXY = f'container=~"{PROXY_RE}"'
CPU_QUERY = f"sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{{{_PROXY}}}[STEP]))"
MEMORY_QUERY = f"max by (namespace, pod) (container_memory_working_set_bytes{{{_PROXY}}})"
OOM_QUERY = (
    "(sum by (namespace, pod) "
    f'(increase(kube_pod_container_status_restarts_total{{container=~"{PROXY_RE}"}}[STEP])) > 0)'
    " and on (namespace, pod) "
    "(max by (namespace, pod) (kube_pod_container_status_last_terminated_reason"
    f'{{container=~"{PROXY_RE}", reason="OOMKilled"}}) == 1)'
)
POD_OWNER_QUERY = "max by (namespace, pod, owner_kind, owner_name) (last_over_time(kube_pod_owner[WINDOW]))"
RS_OWNER_QUERY = (
    "max by (namespace, replicaset, owner_kind, owner_name) (last_over_time(kube_replicaset_owner[WINDOW]))"
)
SERIES_QUERY = f"count(count by (namespace, pod) (container_memory_working_set_bytes{{{_PROXY}}}))"
# the pod-template-hash alphabet (no vowels, no 0/1/3), for ReplicaSets kube-state-metrics
# has no owner for
_HASH_SUFFIX = re.compile(r"^(?P<stem>.+)-[bcdfghjklmnpqrstvwxz2456789]{5,10}$")


class PrometheusError(RuntimeError):
    pass


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s"


class PrometheusUsage(PollingUsage):
    name = "prometheus"

    def __init__(
        self,
        url: str,
        history: UsageHistory,
        *,
        step: float = 300.0,
        lag: float = 60.0,
        max_points: int = 50_000,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(history, step)
        if step < 1 or step != int(step):
            raise ValueError("the Prometheus step must be a whole number of seconds, at least 1")
        self.url = url.rstrip("/")
        self.lag = lag
        self.max_points = max_points
        self.timeout = timeout
        self.done_until: float | None = None
        self.unmatched = 0
        self.queries = 0

    # --- HTTP ------------------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        body = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.queries += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            try:
                detail = orjson.loads(detail).get("error", detail)
            except orjson.JSONDecodeError:
                pass
            raise PrometheusError(f"{self.url}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusError(f"{self.url}{path}: {getattr(exc, 'reason', exc)}") from None
        except orjson.JSONDecodeError:
            raise PrometheusError(f"{self.url}{path}: the answer is not JSON") from None
        if not isinstance(payload, dict) or payload.get("status") != "success":
            raise PrometheusError(
                f"{self.url}{path}: {payload.get('error') if isinstance(payload, dict) else payload}"
            )
        return payload.get("data") or {}

    def instant(self, query: str, at: float) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/query", {"query": query, "time": repr(at)}).get("result") or [])

    def range(self, query: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self._get(
            "/api/v1/query_range",
            {"query": query, "start": repr(start), "end": repr(end), "step": _duration(self.interval)},
        )
        return list(data.get("result") or [])

    # --- owners ----------------------------------------------------------------------------

    def _owners(self, at: float) -> dict[tuple[str, str], WorkloadKey]:
        window = _duration(self.history.sizing.window)
        rs_owner: dict[tuple[str, str], str] = {}
        for row in self.instant(RS_OWNER_QUERY.replace("WINDOW", window), at):
            m = row.get("metric") or {}
            if m.get("owner_kind") == "Deployment":
                rs_owner[(m.get("namespace", ""), m.get("replicaset", ""))] = m.get("owner_name", "")
        owners: dict[tuple[str, str], WorkloadKey] = {}
        for row in self.instant(POD_OWNER_QUERY.replace("WINDOW", window), at):
            m = row.get("metric") or {}
            ns, pod = m.get("namespace", ""), m.get("pod", "")
            kind, name = m.get("owner_kind", ""), m.get("owner_name", "")
            owners[(ns, pod)] = self._workload(ns, pod, kind, name, rs_owner)
        return owners

    @staticmethod
    def _workload(
        ns: str, pod: str, kind: str, name: str, rs_owner: Mapping[tuple[str, str], str]
    ) -> WorkloadKey:
        if not kind or kind == "<none>" or not name or name == "<none>":
            return WorkloadKey(ns, "Pod", pod)
        if kind == "ReplicaSet":
            deployment = rs_owner.get((ns, name))
            if deployment:
                return WorkloadKey(ns, "Deployment", deployment)
            m = _HASH_SUFFIX.match(name)
            return WorkloadKey(ns, "Deployment", m.group("stem")) if m else WorkloadKey(ns, kind, name)
        if kind == "Job":
            m = _CRONJOB_JOB.match(name)
            if m:
                return WorkloadKey(ns, "CronJob", m.group("stem"))
        return WorkloadKey(ns, kind, name)

    # --- reading ---------------------------------------------------------------------------

    def _chunk_steps(self, at: float) -> int:
        rows = self.instant(SERIES_QUERY, at)
        series = int(float(rows[0]["value"][1])) if rows else 0
        return max(1, min(10_000, self.max_points // max(1, series)))

    def _time(self, raw: object, pod: tuple[str, str]) -> float | None:
        """A point's time, or None (counted) when it is not a time."""
        try:
            return parse_timestamp(raw)
        except ValueError as exc:
            self.refuse("time", f"pod {pod[0]}/{pod[1]}: {exc}")
            return None

    def _value(self, raw: object, what: str, pod: tuple[str, str]) -> float | None:
        """A point's CPU (cores) or memory (bytes), or None (counted) when it cannot be a
        proxy's: NaN, an infinity, negative or absurdly large (Prometheus writes a sample
        value as a decimal string, ``"NaN"`` and ``"+Inf"`` included)."""
        try:
            number = float(raw)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            self.refuse("value", f"pod {pod[0]}/{pod[1]}: {what} {raw!r} is not a number")
            return None
        try:
            return checked_reading(number, what, raw)
        except ValueError as exc:
            self.refuse("value", f"pod {pod[0]}/{pod[1]}: {exc}")
            return None

    def poll(self, until: float) -> None:
        step = self.interval
        if self.done_until is None:
            # all of every slot that counts, whenever this replica started
            start = math.ceil(self.history.window_start(until) / step) * step
        else:
            start = self.done_until + step
        if start > until:
            return
        owners = self._owners(until)
        chunk = self._chunk_steps(until) * step
        stepq = _duration(step)
        queries = (
            ("cpu", CPU_QUERY.replace("STEP", stepq)),
            ("memory", MEMORY_QUERY),
            ("oom", OOM_QUERY.replace("STEP", stepq)),
        )
        t0 = start
        while t0 <= until:
            t1 = min(until, t0 + chunk - step)
            points: dict[tuple[str, str], dict[float, list[float]]] = {}
            for what, query in queries:
                for row in self.range(query, t0, t1):
                    m = row.get("metric") or {}
                    pod_id = (m.get("namespace", ""), m.get("pod", ""))
                    key = owners.get(pod_id)
                    if key is None:
                        self.unmatched += 1
                        continue
                    if what == "oom":
                        for t, _ in row.get("values") or []:
                            at = self._time(t, pod_id)
                            if at is not None:
                                self.history.add_oom(key, at)
                        continue
                    series = points.setdefault(pod_id, {})
                    for t, v in row.get("values") or []:
                        at = self._time(t, pod_id)
                        value = self._value(v, what, pod_id)
                        if at is None or value is None:
                            continue
                        cell = series.setdefault(at, [math.nan, math.nan])
                        cell[0 if what == "cpu" else 1] = value
            for pod_id, series in points.items():
                # a reading needs both (a pod that just started or just ended has one)
                self.history.add_many(
                    owners[pod_id],
                    (
                        (t, c, m)
                        for t, (c, m) in sorted(series.items())
                        if not (math.isnan(c) or math.isnan(m))
                    ),
                )
            t0 = t1 + step
        self.done_until = until


def prometheus_summaries(url: str, sizing: Sizing, now: float) -> dict[WorkloadKey, UsageSummary]:
    """The window up to ``now`` read once (the dry-run tools' ``--prometheus``)."""
    return dict(PrometheusUsage(url, UsageHistory(sizing)).once(now))
