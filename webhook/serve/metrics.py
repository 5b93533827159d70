"""Prometheus metrics. Every label comes from a fixed set (outcomes, modes, skip reasons,
HTTP codes), never from namespaces, pod names or annotation values."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from webhook.reasons import Mode, Skip

OUTCOMES = ("injected", "skipped", "error")
# the mode of a meshed pod ("none": nothing redirected), or "none" for a pod not meshed
MODES = tuple(dict.fromkeys((*(m.value for m in Mode), "none")))
BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


# A `_created` sample per label set doubles the series for no question an alert asks.
disable_created_metrics()


class CallbackCounter(Collector):
    """A counter whose value is read from its owner when scraped (the owner counts; the
    type stays a counter, so rate() and increase() apply)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Any:
        yield CounterMetricFamily(self.name, self.documentation, value=float(self.read()))


class LabelledCallbackCounter(Collector):
    """A counter per value of one label, read from its owner when scraped; the owner's
    mapping has a fixed set of keys (the label's values)."""

    def __init__(
        self, name: str, documentation: str, label: str, read: Callable[[], Mapping[str, int]]
    ) -> None:
        self.name, self.documentation, self.label, self.read = name, documentation, label, read

    def collect(self) -> Any:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.read().items()):
            family.add_metric([value], float(count))
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.admissions = Counter(
            "mesh_injector_admissions",
            "Admission reviews answered, by outcome and mode",
            ["outcome", "mode"],
            registry=r,
        )
        self.skips = Counter("mesh_injector_skips", "Pods not meshed, by reason", ["reason"], registry=r)
        self.rejected = Counter(
            "mesh_injector_bad_requests",
            "Requests refused before admission, by HTTP status",
            ["code"],
            registry=r,
        )
        self.duration = Histogram(
            "mesh_injector_admission_duration_seconds",
            "Time to decide and build the patch for one review",
            buckets=BUCKETS,
            registry=r,
        )
        self.cert_expiry = Gauge(
            "mesh_injector_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate",
            registry=r,
        )
        self.policy_age = Gauge(
            "mesh_injector_policy_age_seconds", "Seconds since the policy was loaded", registry=r
        )
        self.snapshot_age = Gauge(
            "mesh_injector_cluster_snapshot_age_seconds",
            "Seconds since the cluster snapshot was built",
            registry=r,
        )
        self.usage_workloads = Gauge(
            "mesh_injector_usage_workloads",
            "Workloads with observed proxy usage in the current snapshot",
            registry=r,
        )
        self._children: dict[tuple[str, str, str | None], tuple[Any, Any]] = {}
        for outcome in OUTCOMES:
            for mode in MODES:
                self.admissions.labels(outcome, mode)
        for skip in Skip:
            self.skips.labels(skip.value)
        self.body_bytes = Gauge(
            "mesh_injector_request_body_bytes_in_flight",
            "Bytes of admission request bodies held at this moment (bounded by the body budget)",
            registry=r,
        )
        for code in ("400", "405", "408", "413", "415", "503"):
            self.rejected.labels(code)

    def count(self, outcome: str, mode: str, skip: str | None, seconds: float) -> None:
        """One admission; label children are looked up once and reused."""
        key = (outcome, mode, skip)
        children = self._children.get(key)
        if children is None:
            children = (self.admissions.labels(outcome, mode), self.skips.labels(skip) if skip else None)
            self._children[key] = children
        children[0].inc()
        if children[1] is not None:
            children[1].inc()
        self.duration.observe(seconds)

    def track(self, *, policy_loaded: float, snapshot_built: Callable[[], float]) -> None:
        self.policy_age.set_function(lambda: time.time() - policy_loaded)
        self.snapshot_age.set_function(lambda: time.time() - snapshot_built())

    def track_certificate(self, expiry: Callable[[], float], reloads: Callable[[], int]) -> None:
        self.cert_expiry.set_function(expiry)
        self.registry.register(
            CallbackCounter(
                "mesh_injector_certificate_reloads",
                "Times the serving certificate was reloaded from disk",
                reloads,
            )
        )

    def track_watches(self, stale: Mapping[str, Callable[[], float]]) -> None:
        """Exported only where resources are watched (a --cluster file has no watch)."""
        gauge = Gauge(
            "mesh_injector_cluster_cache_stale_seconds",
            "Seconds since a watched resource lost the API server (0 while its watch is healthy)",
            ["resource"],
            registry=self.registry,
        )
        for resource, read in stale.items():
            gauge.labels(resource).set_function(read)

    def track_usage(
        self,
        age: Callable[[], float],
        failures: Callable[[], int],
        refused: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """Exported only where observed usage has a source; ``refused``: where it is a live
        source, the readings it skipped by why (``value``, ``time``)."""
        Gauge(
            "mesh_injector_usage_age_seconds",
            "Seconds since observed usage was last read successfully (0 for a samples file)",
            registry=self.registry,
        ).set_function(age)
        self.registry.register(
            CallbackCounter(
                "mesh_injector_usage_read_failures", "Failed reads of observed usage since start", failures
            )
        )
        if refused is not None:
            self.registry.register(
                LabelledCallbackCounter(
                    "mesh_injector_usage_readings_refused",
                    "Readings of a live usage source skipped because a CPU or memory value is not a "
                    "finite quantity in range (value) or a time is not one (time)",
                    "reason",
                    refused,
                )
            )
