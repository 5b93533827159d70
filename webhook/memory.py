"""Giving freed memory back to the system after a big transient (a relist, a poll).

CPython's allocator keeps freed blocks for reuse; glibc's ``malloc_trim`` returns the
free pages at the top and in the middle of its heaps. Elsewhere (musl, macOS) this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


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
