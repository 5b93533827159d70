"""Giving freed memory back to the system after a big transient (a relist, a poll, a burst
of multi-megabyte admission reviews).

CPython's allocator keeps freed blocks for reuse; glibc's ``malloc_trim`` returns the
free pages at the top and in the middle of its heaps. Elsewhere (musl, macOS) this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading


@functools.cache
def _trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    trim = _trim()
    if trim is not None:
        trim(0)


# mallopt(3) parameter numbers (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3


def tune_allocator(mmap_threshold: int = 256 * 1024) -> bool:
    """Serve every allocation of ``mmap_threshold`` bytes or more from its own mapping.

    glibc raises this threshold dynamically each time a mapped block is freed (up to 32 MiB),
    after which a multi-megabyte request body lands in the heap, where it fragments and stays
    after it is freed. A fixed threshold hands such buffers back to the system when freed.
    True when the setting took (glibc only).
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))


class Trimmer:
    """Gives freed memory back shortly after a large transient, off the event loop.

    ``poke()`` is cheap and thread-safe; a daemon thread trims at most once per ``quiet``
    seconds while pokes keep coming, so a burst of large requests is trimmed as it goes and
    once more after it ends.
    """

    def __init__(self, quiet: float = 0.5) -> None:
        self.quiet = quiet
        self.trims = 0
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        self._wanted.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wanted.wait(timeout=1.0):
                continue
            if self._stop.wait(self.quiet):
                return
            self._wanted.clear()
            release_free_memory()
            self.trims += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
