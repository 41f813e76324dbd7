"""Every verb runs with the tuned allocator (lavila.malloc); it can be turned off, and it is a no-op off glibc."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import lavila.cli
from lavila import malloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def run_python(code: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt; elsewhere it is a no-op")
def test_applied_on_glibc_and_switchable_off() -> None:
    code = "from lavila.malloc import tune_cpu_allocator as t; print(t())"
    assert run_python(code) == "True"
    assert run_python(code, LAVILA_MALLOC_TUNE="0") == "False"


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt")
def test_freed_memory_stays_mapped() -> None:
    """What the tuning is for: a step's worth of blocks freed and allocated again stays mapped, not faulted in anew.

    With glibc's defaults the freed blocks end up at the top of the heap, which is trimmed (returned to the kernel)
    once it exceeds the adaptive trim threshold, so every round faults its pages in again.
    """
    code = """
import ctypes, resource, sys
if sys.argv[1:] == ["tuned"]:
    from lavila.malloc import tune_cpu_allocator
    assert tune_cpu_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, count = 2**20, 48
def step():
    blocks = [libc.malloc(size) for _ in range(count)]
    for p in blocks:
        ctypes.memset(p, 1, size)
    for p in reversed(blocks):
        libc.free(p)
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    pages = 8 * 48 * 2**20 // 4096
    default = int(run_python(code, LAVILA_MALLOC_TUNE="1"))
    tuned = int(subprocess.run([sys.executable, "-c", code, "tuned"], capture_output=True, text=True,
                               check=True).stdout)
    assert default > pages // 2, default  # glibc's default: every round faults its pages in again
    assert tuned < pages // 20, tuned  # tuned: the same pages are reused


def test_every_verb_tunes_before_running(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(lavila.cli, "tune_cpu_allocator", lambda: calls.append("tuned"))
    assert lavila.cli.main(["models"]) == 0
    assert calls == ["tuned"]


def test_off_glibc_is_a_no_op(monkeypatch) -> None:
    malloc.tune_cpu_allocator.cache_clear()
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    try:
        assert malloc.tune_cpu_allocator() is False
    finally:
        malloc.tune_cpu_allocator.cache_clear()
