"""How the device process gives memory back to the system (glibc), so the job's peak is what it uses.

glibc keeps freed heap memory for reuse: after the trunk pass the training
would run beside the trunk's freed (but still resident) memory, and the
fragments of many activation-sized blocks add up. Two settings, both for the
whole process and both no-ops off glibc:

* :func:`prefer_mmap`: allocations of 256 KiB and more come from ``mmap``, so
  freeing them returns the pages at once (measured on a MiniLM job on the
  torch backend: peak RSS 560-590 MB by default, 500 MB with it; the same
  trainer's steps, a few more page faults);
* :func:`trim`: return the free heap top (``malloc_trim``), after a phase
  whose memory is no longer needed (the trunk's sessions).
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 256 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def prefer_mmap(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve allocations of ``threshold`` bytes and more with mmap; whether the setting took effect."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))


def trim() -> None:
    """Give the free memory at the top of the heap back to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
