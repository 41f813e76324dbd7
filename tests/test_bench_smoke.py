"""The kernel and top-p benchmarks run end to end at a tiny size and agree with the code they time (no timings
are asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_attention_runs_and_reports_the_rule(capsys) -> None:
    assert load("bench_attention").main(["--repeats", "1", "--heads", "2", "--head-dim", "8", "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| space") or
            line.startswith("| time") or line.startswith("| CLS")]
    assert len(rows) == 12  # 3 shapes x 2 dtypes x 2 passes
    assert all(row.endswith("| explicit |") for row in rows if "bfloat16" in row)  # bf16 on CPU: explicit


def test_top_p_table_checks_the_masks() -> None:
    table = load("bench_narrator").top_p_table(rows=4, repeats=1)
    body = [line for line in table.splitlines() if line.startswith("| peaked") or line.startswith("| flat")]
    assert len(body) == 2 and all(line.endswith("| yes |") for line in body), table
