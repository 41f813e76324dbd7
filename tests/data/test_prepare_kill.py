"""`lavila prepare-ego4d` killed for real: at each of its fail points, a worker by SIGKILL, the parent by SIGKILL.

Every scenario ends with a rerun whose output equals an uninterrupted run's, file for file and byte for byte (libx264
with one thread is deterministic), with no temporary file left and no process left running.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from lavila.data.prepare import write_synthetic_video
from tests.failpoint_helpers import (
    KILLED,
    kill_group,
    kill_plan,
    leftover_temps,
    output_of,
    pid_alive,
    point_names,
    read_trace,
    run_cli,
    start_cli,
    tree_digest,
    wait_until,
)

REPORT = "prepare_report.json"
# One kill per (point, detail) at its first pass, and at the last pass of the manifest (the "complete" write of the
# last video); `test_the_kill_plan_covers_every_fail_point` keeps this list equal to what a real run passes.
ATOMIC = ("atomic.tmp_written", "atomic.before_rename", "atomic.after_rename")
PLAN = [
    "prepare.video_start@a.mp4=1",
    "prepare.chunk_encoded@a.mp4/0.mp4=1",
    "prepare.chunk_renamed@a.mp4/0.mp4=1",
    *(f"{p}@manifest.json=1" for p in ATOMIC),
    "prepare.chunk_encoded@a.mp4/1.mp4=1",
    "prepare.chunk_renamed@a.mp4/1.mp4=1",
    "prepare.video_start@b.mp4=1",
    "prepare.chunk_encoded@b.mp4/0.mp4=1",
    "prepare.chunk_renamed@b.mp4/0.mp4=1",
    *(f"{p}@{REPORT}=1" for p in ATOMIC),
    *(f"{p}@manifest.json=5" for p in ATOMIC),
]


def _write_sources(folder, lengths: dict[str, int]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in lengths.items():
        write_synthetic_video(folder / f"{name}.mp4", n, fps=30, height=32, width=48, gop=15)
    return folder


def _args(src, dst, workers: int = 1) -> list[str]:
    return ["prepare-ego4d", str(src), str(dst), "--chunk-len", "1", "--short-side", "32", "--workers",
            str(workers), "--preset", "ultrafast", "--no-progress"]


def _outputs(dst) -> dict[str, str]:
    return tree_digest(dst, skip=lambda p: p.name == REPORT)


def _videos(dst) -> list[tuple]:
    report = json.loads((dst / REPORT).read_text())
    return [(v["uid"], v["failed"], v["chunks"]) for v in report["videos"]]


def _reference(src, base, workers: int = 1) -> dict:
    """An uninterrupted run: its outputs, its report's videos and its fail-point trace."""
    trace = base / "trace"
    proc = run_cli(_args(src, base / "dst", workers), trace=trace)
    assert proc.returncode == 0, proc.stderr
    return {"outputs": _outputs(base / "dst"), "videos": _videos(base / "dst"), "trace": read_trace(trace)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """a: 45 frames (two 1-s chunks), b: 20 frames (one): tiny, so a run takes about a second."""
    return _write_sources(tmp_path_factory.mktemp("src"), {"a": 45, "b": 20})


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    ref = _reference(sources, tmp_path_factory.mktemp("reference"))
    assert sum(name.endswith("/manifest.json") for name in ref["outputs"]) == 2 and len(ref["outputs"]) == 5
    return ref


def test_the_kill_plan_covers_every_fail_point(reference):
    assert point_names(reference["trace"]) == {"prepare.video_start", "prepare.chunk_encoded",
                                               "prepare.chunk_renamed", *ATOMIC}
    assert sorted(kill_plan(reference["trace"])) == sorted(PLAN)


@pytest.mark.slow
@pytest.mark.parametrize("term", PLAN)
def test_killed_at_a_fail_point_then_rerun_equals_an_uninterrupted_run(sources, reference, tmp_path, term):
    dst = tmp_path / "dst"
    killed = run_cli(_args(sources, dst), failpoints=term)
    assert killed.returncode == KILLED, killed.stderr
    rerun = run_cli(_args(sources, dst))
    assert rerun.returncode == 0, rerun.stderr
    assert _outputs(dst) == reference["outputs"]  # every chunk and manifest, identical bytes, nothing extra
    assert _videos(dst) == reference["videos"]
    assert not leftover_temps(dst), leftover_temps(dst)


@pytest.fixture(scope="module")
def sources3(tmp_path_factory):
    """Three videos for two workers: while one worker is held on b, the other goes on with a and c."""
    return _write_sources(tmp_path_factory.mktemp("src3"), {"a": 45, "b": 20, "c": 30})


@pytest.fixture(scope="module")
def reference3(sources3, tmp_path_factory):
    return _reference(sources3, tmp_path_factory.mktemp("reference3"), workers=2)


def _wait_for_pass(trace, point: str, detail: str, timeout: float = 60) -> int:
    """The pid of the process that passed `point` with `detail` (waits for it)."""
    found: list[int] = []

    def seen() -> bool:
        found[:] = [pid for pid, name, d in read_trace(trace) if name == point and d == detail]
        return bool(found)

    assert wait_until(seen, timeout), f"no process passed {point} {detail} within {timeout} s"
    return found[0]


def test_a_worker_killed_by_sigkill_fails_its_video_only_and_the_job_reports_it(sources3, reference3, tmp_path):
    dst, trace = tmp_path / "dst", tmp_path / "trace"
    # the worker that takes b.mp4 stops there, so the test can kill it mid-video, as the OOM killer would
    proc = start_cli(_args(sources3, dst, workers=2), failpoints="prepare.video_start@b.mp4=1:sleep(60)", trace=trace)
    try:
        worker = _wait_for_pass(trace, "prepare.video_start", "b.mp4")
        assert worker != proc.pid
        os.kill(worker, signal.SIGKILL)
        rc = proc.wait(timeout=60)  # the parent notices at once: no hang
    finally:
        kill_group(proc)
    out, err = output_of(proc)
    assert rc == 1, err
    report = json.loads((dst / REPORT).read_text())  # the job ended with its report
    assert report["summary"]["videos"] == 3 and report["summary"]["videos_failed"] == 1
    failed = {v["uid"]: v["reason"] for v in report["videos"] if v["failed"]}
    assert set(failed) == {"b"} and "SIGKILL" in failed["b"] and "rerun" in failed["b"]
    assert "FAILED" in err and "b.mp4" in err

    rerun = run_cli(_args(sources3, dst, workers=2))
    assert rerun.returncode == 0, rerun.stderr
    assert _outputs(dst) == reference3["outputs"] and _videos(dst) == reference3["videos"]
    assert not leftover_temps(dst)


def test_killing_the_parent_stops_its_workers_at_once_and_a_rerun_is_clean(sources3, reference3, tmp_path):
    dst, trace = tmp_path / "dst", tmp_path / "trace"
    proc = start_cli(_args(sources3, dst, workers=2), failpoints="prepare.video_start@b.mp4=1:sleep(60)", trace=trace)
    try:
        worker = _wait_for_pass(trace, "prepare.video_start", "b.mp4")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # the worker dies with its parent instead of writing on behind it (it would sleep 60 s, then encode)
        assert wait_until(lambda: not pid_alive(worker), timeout=10), "a worker outlived its killed parent"
        workers = {pid for pid, _, _ in read_trace(trace)} - {proc.pid}
        assert wait_until(lambda: not any(pid_alive(p) for p in workers), timeout=10)
    finally:
        kill_group(proc)
    rerun = run_cli(_args(sources3, dst, workers=2))
    assert rerun.returncode == 0, rerun.stderr
    assert _outputs(dst) == reference3["outputs"] and _videos(dst) == reference3["videos"]
    assert not leftover_temps(dst)
