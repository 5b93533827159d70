"""The bounded usage history of the live sources: hand-computed cases, its bounds, and a
property against the exact samples-file formula."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.decide.sizing import from_observed
from webhook.loading import parse_policy
from webhook.policy import PolicyError
from webhook.usage.history import CPU_FLOOR, MEMORY_FLOOR, RATIO, SLOTS, UsageHistory, bucket, upper_edge
from webhook.usage.samples import Sample, summarize
from webhook.workload import WorkloadKey

POLICY = parse_policy("sizing: {minSamples: 2, minSpan: 1h}")
KEY = WorkloadKey("shop", "Deployment", "web")
MI = 2**20
DAY = 86400.0
NOW = 1_800_000_000.0


def test_hand_computed_two_readings():
    """100m / 100Mi now (weight 1), 1000m / 200Mi one half-life ago (weight 1/2): the
    total is 1.5, p90 needs 1.35, reached by the 1000m reading; as that is the largest,
    the answer is exactly 1000m (the bucket edge is capped by the maximum)."""
    history = UsageHistory(POLICY.sizing)
    assert history.add(KEY, NOW - DAY, 1.0, 200 * MI)
    assert history.add(KEY, NOW, 0.1, 100 * MI)
    s = history.summaries(NOW)[KEY]
    assert (s.count, s.cpu_p, s.memory_p, s.cpu_max, s.memory_max) == (2, 1.0, 200 * MI, 1.0, 200 * MI)
    assert s.span == pytest.approx(DAY, abs=0.1)
    assert from_observed(s, POLICY).as_k8s() == {
        "requests": {"cpu": "1150m", "memory": "230Mi"},
        "limits": {"memory": "300Mi"},
    }


def test_hand_computed_decay_lets_fresh_readings_win():
    """Nine fresh 100m readings (weight 9) and one 1000m reading three half-lives old
    (weight 1/8): p90 needs 0.9 × 9.125 = 8.21 < 9, so p90 falls in 100m's bucket, whose
    upper edge is the answer: 0.1m × 1.05^k for the k holding 100m."""
    history = UsageHistory(POLICY.sizing)
    for i in range(9):
        history.add(KEY, NOW - i, 0.1, 10 * MI)
    history.add(KEY, NOW - 3 * DAY, 1.0, 20 * MI)
    s = history.summaries(NOW)[KEY]
    k = bucket(0.1, CPU_FLOOR)
    assert upper_edge(k - 1, CPU_FLOOR) < 0.1 <= upper_edge(k, CPU_FLOOR)
    assert s.cpu_p == upper_edge(k, CPU_FLOOR)
    assert 0.1 <= s.cpu_p < 0.1 * RATIO
    assert s.cpu_max == 1.0  # the limit still sees the spike


def test_bucket_edges():
    for floor in (CPU_FLOOR, MEMORY_FLOOR):
        for k in (1, 2, 50, 140, 300):
            edge = upper_edge(k, floor)
            assert bucket(edge, floor) == k
            assert bucket(edge * (1 + 1e-9), floor) == k + 1
        assert bucket(0.0, floor) == 0 and bucket(floor, floor) == 0


def test_old_slots_leave_and_idle_workloads_are_forgotten():
    history = UsageHistory(POLICY.sizing)
    slot = history.slot_seconds
    other = WorkloadKey("shop", "Deployment", "old")
    history.add(other, NOW - 2 * POLICY.sizing.window, 0.5, 64 * MI)
    history.add(KEY, NOW - 2 * POLICY.sizing.window, 5.0, 1024 * MI)  # a spike long ago
    history.add(KEY, NOW - slot / 2, 0.2, 64 * MI)
    history.add(KEY, NOW, 0.2, 64 * MI)
    s = history.summaries(NOW)
    assert other not in s and len(history) == 1  # nothing of it in the window: forgotten
    assert s[KEY].count == 2 and s[KEY].cpu_max == 0.2  # the old spike is gone with its slot
    # a reading older than every slot the ring holds is refused, not mixed in
    for i in range(SLOTS):
        history.add(KEY, NOW - i * slot, 0.2, 64 * MI)
    assert not history.add(KEY, NOW - (SLOTS + 1) * slot, 9.0, 64 * MI)
    assert history.dropped >= 1


def test_oom_is_recent_only_within_the_lookback():
    history = UsageHistory(POLICY.sizing)
    for i in range(5):
        history.add(KEY, NOW - i * 3600, 0.1, 64 * MI)
    history.add_oom(KEY, NOW - 3600)
    history.add_oom(KEY, NOW - 3600)  # seen again: still one kill
    assert history.summaries(NOW)[KEY].oom_recent is True
    later = NOW + POLICY.sizing.oom_lookback  # the kill is now lookback + 1h old
    assert history.summaries(later)[KEY].oom_recent is False
    res = from_observed(history.summaries(NOW)[KEY], POLICY).as_k8s()
    assert res["limits"]["memory"] == "196Mi"  # max(1.5 × 64Mi × 1.2, 1.5 × 64Mi + 100Mi)


def test_bad_readings_and_the_workload_cap():
    history = UsageHistory(POLICY.sizing, max_workloads=2)
    assert not history.add(KEY, NOW, math.nan, 1.0)
    assert not history.add(KEY, NOW, 0.1, -1.0)
    assert not history.add(KEY, math.inf, 0.1, 1.0)
    for i in range(3):
        history.add(WorkloadKey("ns", "Deployment", f"w{i}"), NOW, 0.1, 64 * MI)
    assert len(history) == 2 and history.dropped == 4


def test_memory_is_bounded_per_workload():
    """A year of readings every minute takes the same bytes as a week's."""
    history = UsageHistory(POLICY.sizing)
    for i in range(0, 7 * 24 * 60):
        history.add(KEY, NOW - 60 * i, 0.05 + 0.1 * ((i * 7919) % 100) / 100, (40 + (i * 104729) % 20) * MI)
    week = history.stats().bytes
    for i in range(7 * 24 * 60, 30 * 24 * 60, 7):
        history.add(KEY, NOW + 60 * i, 0.05 + 0.1 * ((i * 7919) % 100) / 100, (40 + (i * 104729) % 20) * MI)
    assert history.stats().bytes == week < 1024


def test_half_life_bound_is_a_policy_error():
    with pytest.raises(PolicyError, match="halfLife: must be at least 1/300"):
        parse_policy("sizing: {window: 7d, halfLife: 30s}")


readings = st.lists(
    st.tuples(
        st.floats(0, 7 * DAY),
        st.floats(0.001, 4.0),
        st.integers(8, 4096),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(readings)
def test_percentiles_bracket_the_exact_formula(rows):
    """For readings in the history's window, the histogram's percentile is never below the
    SPEC formula's and at most one 5 % bucket above it; counts and maxima are exact."""
    history = UsageHistory(POLICY.sizing)
    start = history.window_start(NOW)
    samples = [Sample(NOW - age, cpu, mem * MI) for age, cpu, mem in rows if NOW - age >= start]
    for s in samples:
        assert history.add(KEY, s.timestamp, s.cpu, s.memory)
    got = history.summaries(NOW)[KEY]
    exact = summarize(samples, dataclasses.replace(POLICY.sizing, window=NOW - start), NOW)
    assert got.count == exact.count
    assert got.cpu_max == exact.cpu_max and got.memory_max == exact.memory_max
    assert exact.cpu_p * (1 - 1e-6) <= got.cpu_p <= exact.cpu_p * RATIO * (1 + 1e-6)
    assert exact.memory_p * (1 - 1e-6) <= got.memory_p <= exact.memory_p * RATIO * (1 + 1e-6)
