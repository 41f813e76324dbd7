"""The loader benchmark's main function runs end to end at a tiny size (numbers are not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_loader.py"


def test_bench_loader_runs_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_loader", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.main(
        ["--seconds", "2", "--clips", "2", "--naive-clips", "1", "--clip-lengths", "4", "--tmp", str(tmp_path)]
    )
    assert "| pyav | 4 |" in table and "naive: decode whole chunk" in table
    assert not list(tmp_path.iterdir())  # the synthetic chunk is cleaned up
