"""Benchmark of the live usage history and the Prometheus usage source.

    python bench/usage.py

Prints: readings folded into the history per second (baseline: keeping every reading
exactly, in the packed columns the samples file uses); summaries of 10,000 workloads,
computed afresh and from the cache; the history's bytes per workload; and, when Debian's
prometheus is installed, the rate at which a real Prometheus holding a week of 5-minute
points for 60 pods is read back into the history (``query_range`` + decoding + folding),
against fetching the same answers only.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import promdata  # noqa: E402
from webhook.loading import load_policy  # noqa: E402
from webhook.usage.history import UsageHistory  # noqa: E402
from webhook.usage.prometheus import CPU_QUERY, MEMORY_QUERY, PrometheusUsage  # noqa: E402
from webhook.usage.samples import Sample, SampleColumns  # noqa: E402
from webhook.workload import WorkloadKey  # noqa: E402

POLICY = load_policy()
WORKLOADS = 10_000


def readings(n_per: int, rng: random.Random, now: float) -> list[tuple[WorkloadKey, float, float, float]]:
    keys = [WorkloadKey(f"team-{w % 2000}", "Deployment", f"app-{w}") for w in range(WORKLOADS)]
    levels = [(rng.uniform(0.02, 0.2), rng.uniform(40, 200) * 2**20) for _ in range(WORKLOADS)]
    out = []
    for r in range(n_per):
        t = now - r * (7 * 86400 / n_per)
        for key, (cpu, mem) in zip(keys, levels, strict=True):
            out.append((key, t, cpu * rng.uniform(1, 3), mem * rng.uniform(1, 1.5)))
    return out


def history_figures() -> None:
    now = time.time()
    rows = readings(24, random.Random(1), now)
    # baseline: keeping every reading exactly, as the samples file is kept (packed columns)
    columns: dict[WorkloadKey, SampleColumns] = defaultdict(SampleColumns)
    t = time.perf_counter()
    for key, ts, cpu, mem in rows:
        columns[key].append(Sample(ts, cpu, mem))
    base = time.perf_counter() - t
    history = UsageHistory(POLICY.sizing)
    t = time.perf_counter()
    for key, ts, cpu, mem in rows:
        history.add(key, ts, cpu, mem)
    one = time.perf_counter() - t
    grouped: dict[WorkloadKey, list[tuple[float, float, float]]] = defaultdict(list)
    for key, ts, cpu, mem in rows:
        grouped[key].append((ts, cpu, mem))
    batched = UsageHistory(POLICY.sizing)
    t = time.perf_counter()
    for key, series in grouped.items():
        batched.add_many(key, series)
    many = time.perf_counter() - t
    n = len(rows)
    print(
        f"history of {WORKLOADS:,} workloads, {n:,} readings: add() {n / one:,.0f}/s, add_many() per "
        f"workload {n / many:,.0f}/s; baseline (every reading kept in packed columns) {n / base:,.0f}/s; "
        f"ratios {one / base:.1f}x and {many / base:.1f}x"
    )
    t = time.perf_counter()
    history.summaries(now)
    fresh = time.perf_counter() - t
    t = time.perf_counter()
    history.summaries(now + 1)
    cached = time.perf_counter() - t
    stats = history.stats()
    print(
        f"summaries of {WORKLOADS:,} workloads: {fresh * 1000:.0f} ms computed, "
        f"{cached * 1000:.1f} ms from the cache; history {stats.bytes / WORKLOADS:.0f} bytes/workload "
        f"in buffers ({stats.buckets / WORKLOADS:.1f} buckets/workload)"
    )


def prometheus_figures() -> None:
    import shutil

    if not (shutil.which("prometheus") and shutil.which("promtool")):
        print("prometheus: not installed (apt-get install prometheus); skipped")
        return
    base = Path(tempfile.mkdtemp())
    end = int(time.time() // promdata.STEP * promdata.STEP - promdata.STEP)
    template = promdata.build_pods(end)[4]  # db-0: the whole window
    pods = []
    for i in range(60):
        p = promdata.Pod(
            f"team-{i % 7}",
            f"app-{i}-0",
            "StatefulSet",
            f"app-{i}",
            WorkloadKey(f"team-{i % 7}", "StatefulSet", f"app-{i}"),
            template.start,
            template.end,
            template.cpu_buckets,
            template.memory_buckets,
        )
        pods.append(p)
    promdata.write_openmetrics(base / "data.om", pods)
    promdata.backfill(base / "data.om", base / "data")
    with promdata.prometheus(base / "data") as url:
        source = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=promdata.STEP, lag=0)
        t = time.perf_counter()
        source.once(now=end + 10)
        took = time.perf_counter() - t
        n = source.history.readings
        # baseline: the same range queries, answers fetched and decoded only
        probe = PrometheusUsage(url, UsageHistory(POLICY.sizing), step=promdata.STEP, lag=0)
        start = probe.history.window_start(end)
        t = time.perf_counter()
        for query in (CPU_QUERY.replace("STEP", "300s"), MEMORY_QUERY):
            chunk = probe.max_points // len(pods) * promdata.STEP
            t0 = start
            while t0 <= end:
                probe.range(query, t0, min(end, t0 + chunk - promdata.STEP))
                t0 += chunk
        fetch = time.perf_counter() - t
    print(
        f"prometheus backfill: {n:,} readings of {len(pods)} pods over the window in {took:.2f} s "
        f"({n / took:,.0f} readings/s, {source.queries} queries); fetching alone {fetch:.2f} s; "
        f"ratio {took / fetch:.2f}x"
    )


if __name__ == "__main__":
    history_figures()
    prometheus_figures()
