"""Bounded per-workload history of proxy usage, for the live usage sources.

The samples file is summarised exactly (every sample kept). A live source (the metrics
API, Prometheus) sees a reading per proxy every poll, for ever, so its history is kept in
a fixed amount of memory per workload instead:

* **Time slots.** The policy window is cut into ``SLOTS - 1`` slots (a day each for the
  default 7-day window); a workload keeps a ring of ``SLOTS`` of them, so the history that
  counts is the window plus the slot in progress: the window is honoured to within one
  slot. A slot older than that is overwritten by the next one.
* **Decaying histograms.** In each slot, CPU and memory readings go into histograms with
  geometric buckets (each 5 % wider than the last; CPU from 0.1m, memory from 1 MiB). A
  reading adds its decay weight ``2 ** ((t - slot start) / halfLife)``; when summarising at
  ``now`` a slot's weights are scaled by ``2 ** ((slot start - now) / halfLife)``, which
  gives every reading exactly the SPEC weight ``0.5 ** ((now - t) / halfLife)``. Only the
  range of buckets a workload has used is stored.
* **Exact figures per slot:** number of readings, first and last time, the maxima of CPU
  and memory, and the last OOM kill.

A weighted percentile is then the upper edge of the first bucket whose cumulative weight
reaches the percentile (never more than the largest reading): at most 5 % above the exact
value of the samples-file formula, never below it. Counts, span, maxima and OOM kills are
exact. The cost is fixed per workload: ``SLOTS`` rows of the buckets used (a proxy whose
CPU moves between 50m and 200m uses 29 buckets) plus 7 numbers per slot; workloads with
nothing left in the window are forgotten, and at most ``max_workloads`` are tracked.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from webhook.policy import Sizing
from webhook.usage import UsageSummary
from webhook.workload import WorkloadKey

SLOTS = 8
RATIO = 1.05
_LOG_RATIO = math.log(RATIO)
CPU_FLOOR = 1e-4  # cores: 0.1m
MEMORY_FLOOR = float(2**20)  # bytes: 1 MiB
# meta fields of a slot
_INDEX, _COUNT, _FIRST, _LAST, _CPU_MAX, _MEM_MAX, _OOM = range(7)
_FIELDS = 7


def bucket(value: float, floor: float) -> int:
    """Index of the bucket holding ``value``: bucket i holds (floor·R^(i-1), floor·R^i]."""
    if value <= floor:
        return 0
    i = math.ceil(math.log(value / floor) / _LOG_RATIO)
    # correct the float rounding of the logarithm at bucket edges
    if floor * RATIO ** (i - 1) >= value:
        i -= 1
    elif floor * RATIO**i < value:
        i += 1
    return i


def upper_edge(index: int, floor: float) -> float:
    return floor * RATIO**index


class _Histogram:
    """Rows of one resource's buckets, one row a slot, over the bucket range used."""

    __slots__ = ("base", "cells", "width")

    def __init__(self) -> None:
        self.base = 0
        self.width = 0
        self.cells = array("f")

    def add(self, row: int, index: int, weight: float) -> None:
        if self.width == 0:
            self.base, self.width, self.cells = index, 1, array("f", bytes(4 * SLOTS))
        elif index < self.base or index >= self.base + self.width:
            self._widen(index)
        self.cells[row * self.width + index - self.base] += weight

    def _widen(self, index: int) -> None:
        base = min(self.base, index)
        width = max(self.base + self.width, index + 1) - base
        cells = array("f", bytes(4 * SLOTS * width))
        shift = self.base - base
        for row in range(SLOTS):
            old = row * self.width
            cells[row * width + shift : row * width + shift + self.width] = self.cells[old : old + self.width]
        self.base, self.width, self.cells = base, width, cells

    def clear(self, row: int) -> None:
        if self.width == 0:
            return
        start = row * self.width
        self.cells[start : start + self.width] = array("f", bytes(4 * self.width))

    def percentile(self, rows: Iterable[tuple[int, float]], pct: float, floor: float, cap: float) -> float:
        totals = [0.0] * self.width
        cells, width = self.cells, self.width
        for row, factor in rows:
            start = row * width
            for i in range(width):
                w = cells[start + i]
                if w:
                    totals[i] += w * factor
        total = sum(totals)
        if total <= 0:
            return 0.0
        target = total * pct / 100.0 - 1e-9 * total
        acc = 0.0
        for i, w in enumerate(totals):
            acc += w
            if acc >= target:
                return min(upper_edge(self.base + i, floor), cap)
        return cap


class _Workload:
    __slots__ = ("cpu", "memory", "meta")

    def __init__(self) -> None:
        self.cpu = _Histogram()
        self.memory = _Histogram()
        self.meta = array("d", [-1.0] * (SLOTS * _FIELDS))

    def row(self, index: int) -> int | None:
        """The ring row for slot ``index``, cleared if it held an older slot; None when the
        row already holds a newer slot (the reading is too old to keep)."""
        row = index % SLOTS
        base = row * _FIELDS
        held = self.meta[base + _INDEX]
        if held == index:
            return row
        if held > index:
            return None
        self.cpu.clear(row)
        self.memory.clear(row)
        self.meta[base : base + _FIELDS] = array("d", [index, 0.0, math.inf, -math.inf, 0.0, 0.0, -1.0])
        return row


@dataclass(frozen=True, slots=True)
class HistoryStats:
    workloads: int
    readings: int
    dropped: int
    buckets: int


class UsageHistory:
    """Thread-safe: sources add readings from their threads, the snapshot builder reads."""

    def __init__(self, sizing: Sizing, *, max_workloads: int = 50_000) -> None:
        self.sizing = sizing
        self.slot_seconds = float(sizing.window) / (SLOTS - 1)
        self.max_workloads = max_workloads
        self._workloads: dict[WorkloadKey, _Workload] = {}
        self._lock = threading.Lock()
        self.readings = 0
        self.dropped = 0  # too old, not finite, or past max_workloads

    def __len__(self) -> int:
        return len(self._workloads)

    def window_start(self, now: float) -> float:
        """Where the history that counts at ``now`` begins: the start of the oldest slot."""
        index, _ = self._slot(now)
        return (index - (SLOTS - 1)) * self.slot_seconds

    def _slot(self, t: float) -> tuple[int, float]:
        index = math.floor(t / self.slot_seconds)
        return index, index * self.slot_seconds

    def _workload(self, key: WorkloadKey) -> _Workload | None:
        wl = self._workloads.get(key)
        if wl is None:
            if len(self._workloads) >= self.max_workloads:
                return None
            wl = self._workloads[key] = _Workload()
        return wl

    def add(self, key: WorkloadKey, t: float, cpu: float, memory: float) -> bool:
        """One reading of a workload's proxy; False when it was not kept."""
        if not (math.isfinite(t) and math.isfinite(cpu) and math.isfinite(memory)) or cpu < 0 or memory < 0:
            self.dropped += 1
            return False
        index, start = self._slot(t)
        weight = 2.0 ** ((t - start) / self.sizing.half_life)
        with self._lock:
            wl = self._workload(key)
            row = wl.row(index) if wl is not None else None
            if wl is None or row is None:
                self.dropped += 1
                return False
            wl.cpu.add(row, bucket(cpu, CPU_FLOOR), weight)
            wl.memory.add(row, bucket(memory, MEMORY_FLOOR), weight)
            meta, base = wl.meta, row * _FIELDS
            meta[base + _COUNT] += 1
            meta[base + _FIRST] = min(meta[base + _FIRST], t)
            meta[base + _LAST] = max(meta[base + _LAST], t)
            meta[base + _CPU_MAX] = max(meta[base + _CPU_MAX], cpu)
            meta[base + _MEM_MAX] = max(meta[base + _MEM_MAX], memory)
            self.readings += 1
            return True

    def add_oom(self, key: WorkloadKey, t: float) -> bool:
        """An OOM kill of the workload's proxy at ``t`` (the same kill seen twice counts once)."""
        if not math.isfinite(t):
            return False
        index, _ = self._slot(t)
        with self._lock:
            wl = self._workload(key)
            row = wl.row(index) if wl is not None else None
            if wl is None or row is None:
                return False
            base = row * _FIELDS + _OOM
            wl.meta[base] = max(wl.meta[base], t)
            return True

    def summaries(self, now: float) -> dict[WorkloadKey, UsageSummary]:
        """Every workload with readings in the window at ``now``; forgets the others."""
        sizing = self.sizing
        current, _ = self._slot(now)
        oldest = current - (SLOTS - 1)
        out: dict[WorkloadKey, UsageSummary] = {}
        with self._lock:
            for key, wl in list(self._workloads.items()):
                summary = self._summary(wl, now, oldest, current, sizing)
                if summary is None:
                    if all(wl.meta[r * _FIELDS + _INDEX] < oldest for r in range(SLOTS)):
                        del self._workloads[key]
                    continue
                out[key] = summary
        return out

    def _summary(
        self, wl: _Workload, now: float, oldest: int, current: int, sizing: Sizing
    ) -> UsageSummary | None:
        meta = wl.meta
        rows: list[tuple[int, float]] = []
        count = 0.0
        first, last = math.inf, -math.inf
        cpu_max = mem_max = 0.0
        oom_recent = False
        for row in range(SLOTS):
            base = row * _FIELDS
            index = meta[base + _INDEX]
            if index < oldest or index > current:
                continue
            oom = meta[base + _OOM]
            if oom >= 0 and 0 <= now - oom <= sizing.oom_lookback:
                oom_recent = True
            n = meta[base + _COUNT]
            if n <= 0:
                continue
            count += n
            first = min(first, meta[base + _FIRST])
            last = max(last, meta[base + _LAST])
            cpu_max = max(cpu_max, meta[base + _CPU_MAX])
            mem_max = max(mem_max, meta[base + _MEM_MAX])
            rows.append((row, 2.0 ** ((index * self.slot_seconds - now) / sizing.half_life)))
        if not rows:
            return None
        return UsageSummary(
            count=int(count),
            span=last - first,
            cpu_p=wl.cpu.percentile(rows, sizing.cpu_percentile, CPU_FLOOR, cpu_max),
            memory_p=wl.memory.percentile(rows, sizing.memory_percentile, MEMORY_FLOOR, mem_max),
            cpu_max=cpu_max,
            memory_max=mem_max,
            oom_recent=oom_recent,
        )

    def stats(self) -> HistoryStats:
        with self._lock:
            buckets = sum(wl.cpu.width + wl.memory.width for wl in self._workloads.values())
            return HistoryStats(len(self._workloads), self.readings, self.dropped, buckets)
