"""A progress line for long batch runs (``inject`` and ``check`` over many manifests).

Shown only on a terminal and only once a run has taken longer than ``after`` seconds, so
short runs, pipes and CI logs stay exactly as they were. The line is rewritten in place
(``\\r``) at most ``every`` seconds and erased when the run ends, before the final report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(
        self,
        files: int,
        *,
        stream: TextIO | None = None,
        after: float = 1.0,
        every: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.files = files
        self.file = 0
        self.documents = 0
        self.workloads = 0
        self._clock = clock
        self._start = clock()
        self._after = after
        self._every = every
        self._shown_at: float | None = None
        self._width = 0
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())

    def next_file(self) -> None:
        self.file += 1
        self._tick()

    def document(self, workloads: int) -> None:
        self.documents += 1
        self.workloads += workloads
        self._tick()

    def line(self) -> str:
        files = f", file {self.file}/{self.files}" if self.files > 1 else ""
        return (
            f"mesh-injector: {self.documents:,} document(s), {self.workloads:,} workload(s){files}, "
            f"{self._clock() - self._start:.0f} s"
        )

    def _tick(self) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if now - self._start < self._after:
            return
        if self._shown_at is not None and now - self._shown_at < self._every:
            return
        text = self.line()
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)
        self._shown_at = now

    def clear(self) -> None:
        """Erase the line (if one was shown), so what follows starts on a clean line."""
        if self._shown_at is not None:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._shown_at = None
