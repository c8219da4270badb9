"""glibc malloc thresholds fixed for training, set once when the process starts (pipeline/__main__.py).

With glibc's defaults, the mmap threshold rises and falls with the sizes a training step frees, and freed heap
is trimmed back to the kernel between steps, so every step faults the same memory in again: 46 000-54 000
minor page faults per CPU step, 10-20 % of its time (bench/overhead.py, docs/BENCHMARKS.md). Fixing both
thresholds keeps the memory in the process instead: no page faults, at the price of keeping the peak heap.
Setting only one of the two makes it worse (measured), so it is both or none. DataLoader workers forked from
the process inherit the setting. `PIPELINE_MALLOC=default` leaves glibc as it is.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1             # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20       # blocks above this still come from mmap and go back when freed
TRIM_THRESHOLD = 2**31 - 1        # never trim the heap top


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds; True when set (False: not glibc, or PIPELINE_MALLOC=default)."""
    if os.environ.get("PIPELINE_MALLOC") == "default":
        return False
    libc = ctypes.CDLL(None)  # the process's own symbols, libc's included: no library search at start-up
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):   # musl and others: leave alone
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
