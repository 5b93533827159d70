"""Observed proxy usage: samples in, per-workload summaries out.

A *sample* is one reading of a workload's ``mesh-proxy`` container: CPU in cores, memory
working set in bytes, and whether the proxy had just been OOM-killed. Summaries are
computed once when the cluster snapshot is built (not on the admission path): each sample
is weighted by ``0.5 ** (age / halfLife)`` and samples outside the window are dropped.

Samples file format (``--usage FILE``), CSV with a header or JSON lines, same keys::

    namespace,workload,timestamp,cpu,memory,oom
    shop,Deployment/web,2026-11-20T10:00:00Z,120m,48Mi,false

``workload`` is ``Kind/name`` as the workload key names it (``Deployment/web``,
``StatefulSet/db``, ``CronJob/report``, ``Pod/debug``); ``timestamp`` is RFC 3339 or Unix
seconds; ``cpu`` and ``memory`` are Kubernetes quantities (a bare number is cores/bytes);
``oom`` is optional (``true`` when the proxy's last state was OOMKilled at that time).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from webhook.policy import Sizing
from webhook.quantity import parse_quantity
from webhook.workload import WorkloadKey


class UsageError(ValueError):
    """A samples file that cannot be read; the message names the line and field."""


@dataclass(frozen=True, slots=True)
class Sample:
    timestamp: float
    cpu: float
    memory: float
    oom: bool = False


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """What the sizing formula needs for one workload, already reduced."""

    count: int
    span: float
    cpu_p: float
    memory_p: float
    cpu_max: float
    memory_max: float
    oom_recent: bool


def weighted_percentile(values_weights: Iterable[tuple[float, float]], pct: float) -> float:
    """Smallest value whose cumulative weight reaches ``pct`` % of the total weight."""
    pairs = sorted(values_weights)
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return 0.0
    target = total * pct / 100.0
    acc = 0.0
    for value, weight in pairs:
        acc += weight
        if acc >= target - 1e-12 * total:
            return value
    return pairs[-1][0]


def summarize(samples: Iterable[Sample], sizing: Sizing, now: float) -> UsageSummary | None:
    """Decay-weighted percentiles over the window, or None when nothing falls in it."""
    kept = [s for s in samples if now - sizing.window <= s.timestamp <= now]
    if not kept:
        return None
    weights = [0.5 ** ((now - s.timestamp) / sizing.half_life) for s in kept]
    stamps = [s.timestamp for s in kept]
    return UsageSummary(
        count=len(kept),
        span=max(stamps) - min(stamps),
        cpu_p=weighted_percentile(zip((s.cpu for s in kept), weights, strict=True), sizing.cpu_percentile),
        memory_p=weighted_percentile(
            zip((s.memory for s in kept), weights, strict=True), sizing.memory_percentile
        ),
        cpu_max=max(s.cpu for s in kept),
        memory_max=max(s.memory for s in kept),
        oom_recent=any(s.oom and now - s.timestamp <= sizing.oom_lookback for s in kept),
    )


def summarize_all(
    samples: Mapping[WorkloadKey, Iterable[Sample]], sizing: Sizing, now: float
) -> dict[WorkloadKey, UsageSummary]:
    out = {}
    for key, rows in samples.items():
        summary = summarize(rows, sizing, now)
        if summary is not None:
            out[key] = summary
    return out


# --- the samples file ----------------------------------------------------------------


# a reading's time: Unix seconds from the epoch to the end of year 9999 (what a date can say)
LATEST = 253402300799.0
# no proxy uses 10^15 cores or bytes (1P): a reading above is a unit mistake, and it keeps
# infinities (``1e400``) and their overflows out of the sizes
MOST = 1e15


def parse_timestamp(raw: object) -> float:
    """A reading's time: RFC 3339 or Unix seconds, in range (``ValueError`` saying what is
    wrong otherwise)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return _in_range(float(raw), raw)
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("missing timestamp")
    text = raw.strip()
    try:
        return _in_range(float(text), raw)
    except ValueError as exc:
        if "is not a time" in str(exc):
            raise
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"timestamp {raw!r} is not an RFC 3339 time (2026-11-20T10:00:00Z) or Unix seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _in_range(dt.timestamp(), raw)


def _in_range(seconds: float, raw: object) -> float:
    if not (math.isfinite(seconds) and 0 <= seconds <= LATEST):
        raise ValueError(
            f"timestamp {raw!r} is not a time between 1970 and 9999 (Unix seconds 0-{LATEST:.0f})"
        )
    return seconds


def parse_reading(raw: object, what: str) -> float:
    """A CPU (cores) or memory (bytes) reading: a Kubernetes quantity or a bare number, finite,
    not negative, below ``MOST`` (``ValueError`` saying what is wrong otherwise)."""
    if isinstance(raw, bool) or raw is None or raw == "":
        raise ValueError(f"missing {what}")
    try:
        value = float(parse_quantity(raw.strip() if isinstance(raw, str) else raw))
    except (ValueError, ArithmeticError, TypeError):
        raise ValueError(f"{what} {raw!r} is not a quantity") from None
    return checked_reading(value, what, raw)


def checked_reading(value: float, what: str, raw: object) -> float:
    """``value`` (read from ``raw``) when it can be a proxy's reading, else ``ValueError``."""
    if math.isnan(value):
        raise ValueError(f"{what} {raw!r} is not a quantity")
    if value < 0:
        raise ValueError(f"{what} {raw!r} is negative")
    if value >= MOST:
        raise ValueError(f"{what} {raw!r} is out of range (a proxy's reading is finite and below 10^15)")
    return value


def _flag(raw: object) -> bool:
    if raw is None or raw == "" or raw is False:
        return False
    if raw is True:
        return True
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "oomkilled"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"oom {raw!r} is not true/false")


def _key(row: Mapping[str, object]) -> WorkloadKey:
    ns, workload = row.get("namespace"), row.get("workload")
    if not isinstance(ns, str) or not ns:
        raise ValueError("missing namespace")
    if workload is None or workload == "":
        raise ValueError("missing workload (Kind/name, e.g. Deployment/web)")
    if not isinstance(workload, str) or "/" not in workload:
        raise ValueError(f"workload {workload!r} must be Kind/name, e.g. Deployment/web")
    kind, _, name = workload.partition("/")
    if not kind or not name:
        raise ValueError(f"workload {workload!r} must be Kind/name, e.g. Deployment/web")
    return WorkloadKey(ns, kind, name)


@dataclass(eq=True)
class SampleColumns:
    """One workload's samples as packed columns (8 bytes a value instead of an object a
    sample): a file of hundreds of thousands of samples stays a few MB in memory."""

    timestamp: array = field(default_factory=lambda: array("d"))
    cpu: array = field(default_factory=lambda: array("d"))
    memory: array = field(default_factory=lambda: array("d"))
    oom: bytearray = field(default_factory=bytearray)

    def append(self, sample: Sample) -> None:
        self.timestamp.append(sample.timestamp)
        self.cpu.append(sample.cpu)
        self.memory.append(sample.memory)
        self.oom.append(1 if sample.oom else 0)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self.timestamp)):
            yield Sample(self.timestamp[i], self.cpu[i], self.memory[i], bool(self.oom[i]))

    def __len__(self) -> int:
        return len(self.timestamp)


def parse_samples(text: str, source: str = "usage") -> dict[WorkloadKey, SampleColumns]:
    """Samples grouped by workload, from CSV (with header) or JSON lines."""
    return _parse(io.StringIO(text), source)


def _parse(lines: TextIO, source: str) -> dict[WorkloadKey, SampleColumns]:
    """Read line by line: a big file is never held whole in memory."""
    out: dict[WorkloadKey, SampleColumns] = defaultdict(SampleColumns)
    first = ""
    skipped = -1  # blank lines before the first one
    while not first.strip():
        first = lines.readline()
        skipped += 1
        if not first:
            return {}
    rows: Iterable[tuple[int, Mapping[str, object]]]
    if first.lstrip().startswith("{"):
        rows = _json_rows(itertools.chain([first], lines), source, skipped)
    else:
        reader = csv.DictReader(itertools.chain([first], lines))
        needed = {"namespace", "workload", "timestamp", "cpu", "memory"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise UsageError(f"{source}: line {skipped + 1}: header lacks {', '.join(sorted(missing))}")
        rows = _csv_rows(reader, source, skipped)
    for line, row in rows:
        try:
            out[_key(row)].append(
                Sample(
                    timestamp=parse_timestamp(row.get("timestamp")),
                    cpu=parse_reading(row.get("cpu"), "cpu"),
                    memory=parse_reading(row.get("memory"), "memory"),
                    oom=_flag(row.get("oom")),
                )
            )
        except ValueError as exc:
            raise UsageError(f"{source}: line {line}: {exc}") from None
    return dict(out)


def _csv_rows(
    reader: csv.DictReader, source: str, skipped: int
) -> Iterable[tuple[int, Mapping[str, object]]]:
    """Rows with every field of the header (a line of another shape is named, not misread)."""
    header = [f for f in reader.fieldnames or [] if f]
    for row in reader:
        missing = [f for f in header if row.get(f) is None]
        if missing:
            given = len(header) - len(missing)
            raise UsageError(
                f"{source}: line {skipped + reader.line_num}: {given} of the header's {len(header)} "
                f"comma-separated fields (no {', '.join(missing)})"
            )
        yield skipped + reader.line_num, row


def _json_rows(lines: Iterable[str], source: str, skipped: int) -> Iterable[tuple[int, Mapping[str, object]]]:
    for i, line in enumerate(lines, start=skipped + 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{source}: line {i}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{source}: line {i}: expected a JSON object")
        yield i, row


def load_samples(path: str | Path) -> dict[WorkloadKey, SampleColumns]:
    try:
        with Path(path).open(encoding="utf-8", newline="") as f:
            return _parse(f, str(path))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read usage file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file") from None
