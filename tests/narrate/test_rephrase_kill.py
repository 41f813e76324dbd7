"""`lavila rephrase` killed at its fail points (job file, parts, merged output), then rerun: the output equals an
uninterrupted run's, every row exactly once, no temporary file left.

Batch size equals part size, so a resumed run draws the same batches (the sampling seed is per batch)."""

from __future__ import annotations

import pickle

import pytest

from lavila.narrate.shards import ShardedOutput
from tests.failpoint_helpers import KILLED, leftover_temps, point_names, read_trace, run_cli

ROWS = [("v", float(i), float(i) + 1.0, text) for i, text in enumerate(
    ["#C C cuts the bread", "#C C stirs the pot", "#C C picks up the knife", "#O the man cuts bread", "#C C stirs"])]
# (point, which file, pass among that file kind's passes)
STEPS = [
    ("atomic.before_rename", "job", 1),
    ("shards.job_written", "job", 1),
    ("atomic.before_rename", "part", 1),
    ("shards.part_written", "part", 1),
    ("shards.part_written", "part", 3),  # the last part: every row done, nothing merged yet
    ("atomic.before_rename", "output", 1),
    ("atomic.after_rename", "output", 1),
]


def _kind(detail: str) -> str:
    return "job" if detail == "job.json" else "part" if detail.startswith("part-") else "output"


def _args(meta, out, t5) -> list[str]:
    return ["rephrase", "--metadata", str(meta), "--output", str(out), "--model", str(t5), "--batch-size", "2",
            "--part-size", "2", "--device", "cpu", "--max-new-tokens", "6", "--seed", "3"]


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    path = tmp_path_factory.mktemp("meta") / "h_train.pkl"
    path.write_bytes(pickle.dumps(ROWS))
    return path


@pytest.fixture(scope="module")
def reference(metadata, tiny_t5, tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    out = base / "h_train.rephraser.pkl"
    proc = run_cli(_args(metadata, out, tiny_t5), trace=base / "trace")
    assert proc.returncode == 0, proc.stderr
    rows = pickle.loads(out.read_bytes())
    assert [r[:3] for r in rows] == [r[:3] for r in ROWS]
    return {"rows": rows, "trace": read_trace(base / "trace")}


def test_rephrase_passes_the_planned_points(reference):
    assert point_names(reference["trace"]) == {"atomic.tmp_written", "atomic.before_rename", "atomic.after_rename",
                                               "shards.job_written", "shards.part_written"}
    parts = [d for _, name, d in reference["trace"] if name == "shards.part_written"]
    assert len(parts) == 3  # 5 rows in parts of 2


@pytest.mark.slow
@pytest.mark.parametrize("point, which, n", STEPS)
def test_rephrase_killed_at_a_fail_point_then_rerun_equals_an_uninterrupted_run(metadata, tiny_t5, reference,
                                                                                tmp_path, point, which, n):
    detail = "*.pkl" if which == "output" else "job.json" if which == "job" else "part-*.json"
    out = tmp_path / "h_train.rephraser.pkl"
    killed = run_cli(_args(metadata, out, tiny_t5), failpoints=f"{point}@{detail}={n}")
    assert killed.returncode == KILLED, killed.stderr
    rerun = run_cli(_args(metadata, out, tiny_t5))
    assert rerun.returncode == 0, rerun.stderr
    assert pickle.loads(out.read_bytes()) == reference["rows"]
    results, failures = ShardedOutput(tmp_path / "h_train.rephraser.pkl.parts", len(ROWS)).collect()  # once each
    assert sorted(results) == list(range(len(ROWS))) and not failures
    assert not leftover_temps(tmp_path), leftover_temps(tmp_path)
