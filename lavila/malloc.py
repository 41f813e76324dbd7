"""The process's memory allocator, tuned for tensor workloads that free and re-allocate GBs every step.

Kept free of torch so that the CLI can apply it before anything large is allocated, whatever the verb.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling for this setting on 64-bit
MALLOC_TOP_PAD = 256 * 2**20


@functools.lru_cache(maxsize=1)
def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel; True when applied.

    Why: a CPU training or encoding step frees and re-allocates the same few GB of activations every step. With
    glibc's defaults, blocks above its (adaptive) mmap threshold are unmapped on free and the heap top is trimmed,
    so the next step page-faults every page in again: measured on TSF-B (batch 2, 4 x 224, 2 threads) as 301k
    minor faults and 2.2 s of kernel CPU time per 9.4 s fp32 step (43k and 0.7 s per 7.4 s step tuned). Raising
    the mmap threshold to glibc's 32 MiB ceiling, never trimming, and padding heap growth keeps that memory mapped
    (``benchmarks/bench_dual_encoder.py`` has the rows with and without; ``docs/performance.md``). The price: the
    process keeps its high-water mark of heap memory until it exits, which is what a long job wants anyway. It is
    what ``LD_PRELOAD``-ing tcmalloc buys, without a launcher. No-op off glibc; ``LAVILA_MALLOC_TUNE=0`` turns it
    off. Call it once, early, before the big allocations (the CLI does, for every verb); forked data-loader
    workers inherit it.
    """
    if os.environ.get("LAVILA_MALLOC_TUNE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, MALLOC_TOP_PAD)))
