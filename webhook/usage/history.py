"""Bounded per-workload history of proxy usage, for the live usage sources.

The samples file is summarised exactly (every sample kept). A live source (the metrics
API, Prometheus) sees a reading per proxy every poll, for ever, so its history is kept in
a small fixed amount of memory per workload instead:

* **Time slots.** The policy window is cut into ``SLOTS - 1`` slots (56 h each for the
  default 7-day window) and a workload keeps a ring of ``SLOTS`` of them: the history that
  counts is the slots that end inside the window plus the slot in progress, so the window
  is honoured to within one slot. A slot older than that is overwritten by the next one.
* **Decaying histograms.** In each slot, CPU and memory readings go into histograms with
  geometric buckets (each 5 % wider than the last; CPU from 0.1m, memory from 1 MiB). A
  reading adds ``2 ** ((t - slot end) / halfLife)``; summarising scales each slot by
  ``2 ** ((slot end - current slot end) / halfLife)``, which gives every reading the SPEC
  weight ``0.5 ** ((now - t) / halfLife)`` up to one factor common to all readings, which
  a percentile ignores. Only the range of buckets a workload has used is stored.
* **Exact figures per slot:** number of readings, first and last time, the maxima of CPU
  and memory, and the last OOM kill.

A weighted percentile is the upper edge of the first bucket whose cumulative weight
reaches the percentile (never more than the largest reading): at most 5 % above the exact
value of the samples-file formula, never below it. Counts, span, maxima and OOM kills are
exact for the readings kept.

Everything of one workload lives in one ``bytearray``: a 16-byte header (the bucket range
of each resource), ``SLOTS`` slot records of 36 bytes, and ``SLOTS`` rows of float32 cells
per resource — 720 bytes for a proxy whose CPU moves within a factor of 3 (23 buckets)
and memory within 1.5 (9 buckets). Summaries are cached and recomputed only for workloads
with new readings, when a slot rolls over, or while an OOM kill is recent. Workloads with
nothing left in the window are forgotten; at most ``max_workloads`` are tracked.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import sys
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from webhook.policy import Sizing
from webhook.usage.samples import UsageSummary
from webhook.workload import WorkloadKey

SLOTS = 4
RATIO = 1.05
_LOG_RATIO = math.log(RATIO)
CPU_FLOOR = 1e-4  # cores: 0.1m
MEMORY_FLOOR = float(2**20)  # bytes: 1 MiB

_HEADER = struct.Struct("<iiii")  # cpu base, cpu width, memory base, memory width
# slot index, readings, first and last (seconds before the slot's end), last OOM (seconds
# before the end, -1: none), CPU max, memory max
_SLOT = struct.Struct("<iIfffdd")
_CELL = 4  # float32
_META_END = _HEADER.size + SLOTS * _SLOT.size


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


def _empty() -> bytearray:
    buf = bytearray(_META_END)
    _HEADER.pack_into(buf, 0, 0, 0, 0, 0)
    for row in range(SLOTS):
        _SLOT.pack_into(buf, _HEADER.size + row * _SLOT.size, -1, 0, 0.0, 0.0, -1.0, 0.0, 0.0)
    return buf


def _widen(buf: bytearray, cpu: int, memory: int) -> bytearray:
    """``buf`` with bucket ranges that hold buckets ``cpu`` and ``memory`` (-1: any)."""
    cb, cw, mb, mw = _HEADER.unpack_from(buf, 0)

    def span(base: int, width: int, want: int) -> tuple[int, int]:
        if want < 0 or (width and base <= want < base + width):
            return base, width
        if not width:
            return want, 1
        lo = min(base, want)
        return lo, max(base + width, want + 1) - lo

    ncb, ncw = span(cb, cw, cpu)
    nmb, nmw = span(mb, mw, memory)
    if (ncb, ncw, nmb, nmw) == (cb, cw, mb, mw):
        return buf
    out = bytearray(_META_END + SLOTS * (ncw + nmw) * _CELL)
    out[:_META_END] = buf[:_META_END]
    _HEADER.pack_into(out, 0, ncb, ncw, nmb, nmw)
    old = array("f", bytes(buf[_META_END:]))
    new = array("f", bytes(SLOTS * (ncw + nmw) * _CELL))
    for row in range(SLOTS):
        for i in range(cw):
            new[row * ncw + (cb - ncb) + i] = old[row * cw + i]
        for i in range(mw):
            new[SLOTS * ncw + row * nmw + (mb - nmb) + i] = old[SLOTS * cw + row * mw + i]
    out[_META_END:] = new.tobytes()
    return out


@dataclass(frozen=True, slots=True)
class HistoryStats:
    workloads: int
    readings: int
    dropped: int
    buckets: int
    bytes: int


@dataclass(slots=True)
class _Cached:
    summary: UsageSummary | None
    oom_last: float  # -inf: none in the window


class UsageHistory:
    """Thread-safe: sources add readings from their threads, the snapshot builder reads."""

    def __init__(self, sizing: Sizing, *, max_workloads: int = 50_000) -> None:
        self.sizing = sizing
        self.slot_seconds = float(sizing.window) / (SLOTS - 1)
        self.half_life = float(sizing.half_life)  # the policy keeps it >= window / 300
        self.max_workloads = max_workloads
        self._workloads: dict[WorkloadKey, bytearray] = {}
        self._cache: dict[WorkloadKey, _Cached] = {}
        self._dirty: set[WorkloadKey] = set()
        self._cached_slot: int | None = None
        self._lock = threading.Lock()
        self.readings = 0
        self.dropped = 0  # too old, not finite, or past max_workloads

    def __len__(self) -> int:
        return len(self._workloads)

    def _slot(self, t: float) -> tuple[int, float]:
        """The slot holding ``t`` and the slot's end."""
        index = math.floor(t / self.slot_seconds)
        return index, (index + 1) * self.slot_seconds

    def window_start(self, now: float) -> float:
        """Where the history that counts at ``now`` begins: the start of the oldest slot."""
        index, _ = self._slot(now)
        return (index - (SLOTS - 1)) * self.slot_seconds

    def _key(self, key: WorkloadKey) -> WorkloadKey:
        return WorkloadKey(sys.intern(key.namespace), sys.intern(key.kind), key.name)

    def _row(self, key: WorkloadKey, index: int) -> tuple[bytearray, int] | None:
        """The workload's buffer and its ring row for slot ``index`` (cleared if it held an
        older slot); None when the row holds a newer slot or no more workloads fit."""
        buf = self._workloads.get(key)
        if buf is None:
            if len(self._workloads) >= self.max_workloads:
                return None
            key = self._key(key)
            buf = self._workloads[key] = _empty()
        row = index % SLOTS
        at = _HEADER.size + row * _SLOT.size
        held = _SLOT.unpack_from(buf, at)[0]
        if held == index:
            return buf, row
        if held > index:
            return None
        _SLOT.pack_into(buf, at, index, 0, 0.0, 0.0, -1.0, 0.0, 0.0)
        _, cw, _, mw = _HEADER.unpack_from(buf, 0)
        zero = bytes(_CELL * max(cw, mw))
        buf[_META_END + row * cw * _CELL : _META_END + (row + 1) * cw * _CELL] = zero[: cw * _CELL]
        mstart = _META_END + (SLOTS * cw + row * mw) * _CELL
        buf[mstart : mstart + mw * _CELL] = zero[: mw * _CELL]
        return buf, row

    def add(self, key: WorkloadKey, t: float, cpu: float, memory: float) -> bool:
        """One reading of a workload's proxy; False when it was not kept."""
        return self.add_many(key, ((t, cpu, memory),)) == 1

    def add_many(self, key: WorkloadKey, readings: Iterable[tuple[float, float, float]]) -> int:
        """Readings ``(t, cpu, memory)`` of one workload's proxy, folded slot by slot (one
        range check, one record update per slot); how many were kept."""
        by_slot: dict[int, list[tuple[float, float, float, int, int]]] = {}
        for t, cpu, memory in readings:
            if (
                not (math.isfinite(t) and math.isfinite(cpu) and math.isfinite(memory))
                or cpu < 0
                or memory < 0
            ):
                self.dropped += 1
                continue
            index = math.floor(t / self.slot_seconds)
            by_slot.setdefault(index, []).append(
                (t, cpu, memory, bucket(cpu, CPU_FLOOR), bucket(memory, MEMORY_FLOOR))
            )
        kept = 0
        with self._lock:
            for index, rows in by_slot.items():
                found = self._row(key, index)
                if found is None:
                    self.dropped += len(rows)
                    continue
                buf, row = found
                cb, cw, mb, mw = _HEADER.unpack_from(buf, 0)
                lo_c, hi_c = min(r[3] for r in rows), max(r[3] for r in rows)
                lo_m, hi_m = min(r[4] for r in rows), max(r[4] for r in rows)
                if not (cw and cb <= lo_c and hi_c < cb + cw and mw and mb <= lo_m and hi_m < mb + mw):
                    buf = _widen(_widen(buf, lo_c, lo_m), hi_c, hi_m)
                    self._workloads[key] = buf
                    cb, cw, mb, mw = _HEADER.unpack_from(buf, 0)
                end = (index + 1) * self.slot_seconds
                at = _HEADER.size + row * _SLOT.size
                idx, n, first, last, oom, cpu_max, mem_max = _SLOT.unpack_from(buf, at)
                if n == 0:
                    first, last = 0.0, math.inf
                cpu_row, mem_row = row * cw - cb, SLOTS * cw + row * mw - mb
                half_life = self.half_life
                with memoryview(buf) as mv, mv[_META_END:].cast("f") as cells:
                    for t, cpu, memory, cbk, mbk in rows:
                        weight = 2.0 ** ((t - end) / half_life)
                        cells[cpu_row + cbk] += weight
                        cells[mem_row + mbk] += weight
                        before = end - t
                        if before > first:
                            first = before
                        if before < last:
                            last = before
                        if cpu > cpu_max:
                            cpu_max = cpu
                        if memory > mem_max:
                            mem_max = memory
                _SLOT.pack_into(buf, at, idx, n + len(rows), first, last, oom, cpu_max, mem_max)
                kept += len(rows)
            if kept:
                self._dirty.add(key)
                self.readings += kept
        return kept

    def add_oom(self, key: WorkloadKey, t: float) -> bool:
        """An OOM kill of the workload's proxy at ``t`` (the same kill seen twice counts once)."""
        if not math.isfinite(t):
            return False
        index, end = self._slot(t)
        with self._lock:
            found = self._row(key, index)
            if found is None:
                return False
            buf, row = found
            at = _HEADER.size + row * _SLOT.size
            fields = list(_SLOT.unpack_from(buf, at))
            before = end - t
            fields[4] = before if fields[4] < 0 else min(fields[4], before)
            _SLOT.pack_into(buf, at, *fields)
            self._dirty.add(key)
            return True

    def summaries(self, now: float) -> dict[WorkloadKey, UsageSummary]:
        """Every workload with readings in the history that counts at ``now``; forgets
        workloads with nothing left in it."""
        current, _ = self._slot(now)
        lookback = float(self.sizing.oom_lookback)
        out: dict[WorkloadKey, UsageSummary] = {}
        with self._lock:
            if current != self._cached_slot:  # a slot rolled over: everything may change
                self._dirty = set(self._workloads)
                self._cached_slot = current
            for key in self._dirty:
                buf = self._workloads.get(key)
                if buf is None:
                    self._cache.pop(key, None)
                    continue
                cached = self._compute(buf, current)
                if cached is None:
                    del self._workloads[key]
                    self._cache.pop(key, None)
                else:
                    self._cache[key] = cached
            self._dirty = set()
            for key, cached in self._cache.items():
                summary = cached.summary
                if summary is None:
                    continue
                recent = 0 <= now - cached.oom_last <= lookback
                if recent != summary.oom_recent:
                    summary = dataclasses.replace(summary, oom_recent=recent)
                out[key] = summary
        return out

    def _compute(self, buf: bytearray, current: int) -> _Cached | None:
        """The workload's summary over its slots in the window (oom_recent left False);
        None when no slot of it is in the window any more."""
        sizing = self.sizing
        oldest = current - (SLOTS - 1)
        cb, cw, mb, mw = _HEADER.unpack_from(buf, 0)
        rows: list[tuple[int, float]] = []
        count = 0
        first, last = math.inf, -math.inf
        cpu_max = mem_max = 0.0
        oom_last = -math.inf
        any_slot = False
        for row in range(SLOTS):
            index, n, before_first, before_last, oom, cmax, mmax = _SLOT.unpack_from(
                buf, _HEADER.size + row * _SLOT.size
            )
            if index < oldest or index > current:
                continue
            any_slot = True
            end = (index + 1) * self.slot_seconds
            if oom >= 0:
                oom_last = max(oom_last, end - oom)
            if n == 0:
                continue
            count += n
            first = min(first, end - before_first)
            last = max(last, end - before_last)
            cpu_max, mem_max = max(cpu_max, cmax), max(mem_max, mmax)
            rows.append((row, 2.0 ** ((index - current) * self.slot_seconds / self.half_life)))
        if not any_slot:
            return None
        if not rows:
            return _Cached(None, oom_last)
        with memoryview(buf) as mv, mv[_META_END:].cast("f") as cells:
            cpu_p = _percentile(cells, 0, cw, rows, sizing.cpu_percentile, cb, CPU_FLOOR, cpu_max)
            mem_p = _percentile(
                cells, SLOTS * cw, mw, rows, sizing.memory_percentile, mb, MEMORY_FLOOR, mem_max
            )
        summary = UsageSummary(
            count=count,
            span=last - first,
            cpu_p=cpu_p,
            memory_p=mem_p,
            cpu_max=cpu_max,
            memory_max=mem_max,
            oom_recent=False,
        )
        return _Cached(summary, oom_last)

    def stats(self) -> HistoryStats:
        with self._lock:
            buckets = 0
            size = 0
            for buf in self._workloads.values():
                _, cw, _, mw = _HEADER.unpack_from(buf, 0)
                buckets += cw + mw
                size += len(buf)
            return HistoryStats(len(self._workloads), self.readings, self.dropped, buckets, size)


def _percentile(
    cells: memoryview,
    offset: int,
    width: int,
    rows: list[tuple[int, float]],
    pct: float,
    base: int,
    floor: float,
    cap: float,
) -> float:
    totals = [0.0] * width
    for row, factor in rows:
        start = offset + row * width
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
            return min(upper_edge(base + i, floor), cap)
    return cap
