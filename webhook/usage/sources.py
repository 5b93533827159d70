"""Where observed proxy usage comes from, behind one interface.

* ``FileUsage`` — a samples file (``--usage FILE``), summarised exactly once at start.
* ``webhook.usage.metricsapi.MetricsApiUsage`` — the ``metrics.k8s.io`` API, polled
  (``--metrics-api``).
* ``webhook.usage.prometheus.PrometheusUsage`` — Prometheus (``--prometheus URL``).

The live sources fold readings into a bounded ``UsageHistory`` from their own thread and
publish a new dict of summaries after each poll; the admission path only ever reads the
summaries of the snapshot it was handed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from webhook.errors import describe_error
from webhook.memory import release_free_memory
from webhook.policy import Sizing
from webhook.usage.history import UsageHistory
from webhook.usage.samples import UsageSummary, load_samples, summarize_all
from webhook.workload import WorkloadKey

log = logging.getLogger("mesh_injector.usage")
# why a live source skips a reading: a CPU or memory value that is not a finite quantity in
# range, or a time that is not one (the label values of mesh_injector_usage_readings_refused)
REFUSALS = ("value", "time")


class UsageSource:
    """Observed usage summaries by workload; ``start`` begins any background polling and
    ``on_change`` is called (from the source's thread) when the summaries changed."""

    name = "none"

    def start(self, on_change: Callable[[], None]) -> None:
        pass

    def stop(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def summaries(self) -> Mapping[WorkloadKey, UsageSummary]:
        return {}

    def age_seconds(self) -> float:
        """How old the newest successfully read usage is (0 for a file)."""
        return 0.0


class FileUsage(UsageSource):
    name = "file"

    def __init__(self, path: str | Path, sizing: Sizing, now: float) -> None:
        self.path = str(path)
        self._summaries = summarize_all(load_samples(path), sizing, now)

    def summaries(self) -> Mapping[WorkloadKey, UsageSummary]:
        return self._summaries


class PollingUsage(UsageSource):
    """A source that reads the cluster every ``interval`` seconds into a UsageHistory.

    Polls are aligned to the wall clock (multiples of ``interval``), so replicas started
    apart still read at the same moments, and summaries are taken at the poll's aligned
    time, not at the moment the computation happens to run: two replicas that read the
    same data publish the same summaries.

    ``clock`` (monotonic seconds) measures how long the source has been starting; a test
    hands it a clock it moves by hand.
    """

    def __init__(self, history: UsageHistory, interval: float) -> None:
        self.history = history
        self.interval = interval
        self.lag = 0.0  # how long after a grid point its data is complete
        self._summaries: Mapping[WorkloadKey, UsageSummary] = {}
        self._stop = threading.Event()
        self._on_change: Callable[[], None] = lambda: None
        self._ready = False
        self._thread: threading.Thread | None = None
        self._started: float | None = None
        self.ready_after = 60.0
        self.last_success = 0.0
        self.failures = 0
        self.clock: Callable[[], float] = time.monotonic
        # readings skipped because a value or a time could not be a reading, by which
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self._refusals: list[str] = []  # since the last poll: the first few, for the log

    def refuse(self, what: str, detail: str) -> None:
        """Skip one reading whose ``what`` (``value`` or ``time``) is not one a proxy can
        have: it is counted, and the poll's log line names the first few."""
        self.refused[what] += 1
        if len(self._refusals) < 3 and detail not in self._refusals:
            self._refusals.append(detail)

    # implemented by each source: read everything up to the grid point ``until``
    def poll(self, until: float) -> None:
        raise NotImplementedError

    def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._started = self.clock()
        self._thread = threading.Thread(target=self._run, name=f"usage-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> bool:
        """After the first successful read, or ``ready_after`` seconds after start whatever
        happened: a usage source that is slow or away must not keep the webhook out of
        service (pods would be created unmeshed); workloads without usage get profiles."""
        if self._ready:
            return True
        return self._started is not None and self.clock() - self._started > self.ready_after

    def summaries(self) -> Mapping[WorkloadKey, UsageSummary]:
        return self._summaries

    def age_seconds(self) -> float:
        """Since the last successful read; before the first one, since the start."""
        if self.last_success:
            return max(0.0, time.time() - self.last_success)
        return 0.0 if self._started is None else self.clock() - self._started

    def aligned(self, t: float) -> float:
        """The last grid point whose data is complete at ``t``."""
        return ((t - self.lag) // self.interval) * self.interval

    def once(self, now: float | None = None) -> Mapping[WorkloadKey, UsageSummary]:
        """One poll up to the last aligned time before ``now``; the new summaries."""
        until = self.aligned(time.time() if now is None else now)
        before = sum(self.refused.values())
        try:
            self.poll(until)
        finally:
            skipped = sum(self.refused.values()) - before
            if skipped:
                log.warning(
                    f"usage from {self.name}: skipped {skipped} reading(s) that cannot be a proxy's: "
                    + "; ".join(self._refusals)
                    + ("; ..." if skipped > len(self._refusals) else "")
                )
            self._refusals = []
        self._summaries = self.history.summaries(until)
        release_free_memory()
        self.last_success = time.time()
        return self._summaries

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                started = time.monotonic()
                self.once()
                if not self._ready:
                    stats = self.history.stats()
                    log.info(
                        f"usage from {self.name}: first read in {time.monotonic() - started:.1f}s, "
                        f"{stats.readings} readings, {len(self._summaries)} workloads with usage"
                    )
                self._ready = True
                if failures:
                    log.info(f"usage from {self.name}: reading again after {failures} failed reads")
                failures = 0
                self._on_change()
                wait = self.aligned(time.time()) + self.interval + self.lag - time.time()
            except Exception as exc:  # keep the summaries we have; retry with backoff
                failures += 1
                self.failures += 1
                log.warning(
                    f"usage from {self.name}: {describe_error(exc)}; "
                    f"keeping the last summaries ({len(self._summaries)} workloads)"
                )
                wait = min(self.interval, 2.0 * 2 ** min(failures, 5))
            self._stop.wait(max(0.05, wait))
