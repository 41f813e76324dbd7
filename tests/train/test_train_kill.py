"""`lavila train` in real subprocesses: killed at each checkpoint write, interrupted (Ctrl-C, SIGTERM), started twice
in one folder, logging progress to a pipe. Every rerun must end like an uninterrupted run: the same weights in every
file it would have written (``checkpoint.pt``, ``checkpoint_best.pt``, ``checkpoint_000N.pt``), no temporary left.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from lavila.locks import LOCK_NAME
from tests.failpoint_helpers import (
    KILLED,
    kill_group,
    leftover_temps,
    output_of,
    read_trace,
    run_cli,
    start_cli,
    wait_until,
)
from tests.train.helpers import assert_same_weights, tiny_values, weights, write_yaml

# 2 epochs x 2 steps (8 clips, batch 4), a retrieval evaluation after each epoch: epoch 1 is the best one
FILES = ["checkpoint.pt", "checkpoint_0001.pt", "checkpoint_0002.pt", "checkpoint_best.pt"]
SNAPSHOT_POINTS = ("atomic.tmp_written", "atomic.before_rename", "atomic.after_rename", "checkpoint.file_written")


def write_config(folder, **overrides):
    values = tiny_values(folder / "out", epochs=2, synthetic_train_size=8, synthetic_eval_groups=1)
    values.update(overrides)
    return write_yaml(folder / "config.yaml", values), folder / "out"


def assert_like_reference(out, reference) -> None:
    present = sorted(p.name for p in out.glob("checkpoint*.pt"))
    assert present == FILES, present
    for name in FILES:
        assert_same_weights(reference["weights"][name], weights(out / name))
    assert not leftover_temps(out), leftover_temps(out)
    assert not (out / LOCK_NAME).exists()  # released by the finished run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: the weights of every checkpoint file and its fail-point trace."""
    base = tmp_path_factory.mktemp("reference")
    config, out = write_config(base)
    proc = run_cli(["train", config], trace=base / "trace")
    assert proc.returncode == 0, proc.stderr
    return {"weights": {name: weights(out / name) for name in FILES}, "trace": read_trace(base / "trace")}


def test_snapshots_are_written_before_checkpoint_pt_the_commit_point(reference):
    written = [d for _, name, d in reference["trace"] if name == "checkpoint.file_written"]
    # per epoch: the numbered snapshot, the best one (epoch 1 only), then checkpoint.pt, the file a resume reads
    assert written == ["checkpoint_0001.pt", "checkpoint_best.pt", "checkpoint.pt", "checkpoint_0002.pt",
                       "checkpoint.pt"]
    steps = [d for _, name, d in reference["trace"] if name == "train.step_done"]
    assert steps == ["1", "2", "3", "4"]


def test_killed_after_checkpoint_pt_is_replaced_the_rerun_has_every_snapshot(tmp_path, reference):
    config, out = write_config(tmp_path)
    killed = run_cli(["train", config], failpoints="atomic.after_rename@checkpoint.pt=1")
    assert killed.returncode == KILLED, killed.stderr
    rerun = run_cli(["train", config])
    assert rerun.returncode == 0, rerun.stderr
    assert_like_reference(out, reference)


# Each run is killed at the next write of the checkpoint sequence and resumes the previous run's state. The first
# passes of each snapshot's points are epoch 1's (runs start from scratch until checkpoint.pt is committed), after
# the commit the runs resume after epoch 1, so their first passes are epoch 2's.
CHAIN = [
    "atomic.before_rename@checkpoint_0001.pt=1",
    "atomic.after_rename@checkpoint_0001.pt=1",
    "checkpoint.file_written@checkpoint_0001.pt=1",
    "atomic.before_rename@checkpoint_best.pt=1",
    "atomic.after_rename@checkpoint_best.pt=1",
    "checkpoint.file_written@checkpoint_best.pt=1",
    "atomic.tmp_written@checkpoint.pt=1",
    "atomic.before_rename@checkpoint.pt=1",
    "checkpoint.file_written@checkpoint.pt=1",  # epoch 1 committed
    "atomic.tmp_written@checkpoint_0002.pt=1",
    "atomic.after_rename@checkpoint_0002.pt=1",
    "checkpoint.file_written@checkpoint_0002.pt=1",
    "atomic.before_rename@checkpoint.pt=1",
    "atomic.after_rename@checkpoint.pt=1",  # epoch 2 committed: the run is complete
]


def test_the_chain_covers_every_checkpoint_write_point(reference):
    points = {(name, d) for _, name, d in reference["trace"] if name in SNAPSHOT_POINTS and d.startswith("checkpoint")}
    assert {tuple(t.split("=")[0].split("@")) for t in CHAIN} <= points
    assert {name for name, _ in points} == set(SNAPSHOT_POINTS)


@pytest.mark.slow
def test_killed_at_every_checkpoint_write_then_rerun_equals_an_uninterrupted_run(tmp_path, reference):
    config, out = write_config(tmp_path)
    for term in CHAIN:
        killed = run_cli(["train", config], failpoints=term)
        assert killed.returncode == KILLED, (term, killed.stderr[-2000:])
    rerun = run_cli(["train", config])
    assert rerun.returncode == 0, rerun.stderr
    assert_like_reference(out, reference)


# --------------------------------------------------------------------------------------------- Ctrl-C and SIGTERM
def _wait_for_step(trace, step: int, timeout: float = 120) -> None:
    assert wait_until(lambda: any(n == "train.step_done" and d == str(step) for _, n, d in read_trace(trace)),
                      timeout), f"the run did not reach step {step}"


@pytest.mark.slow
def test_ctrl_c_saves_at_the_step_boundary_and_the_rerun_resumes_exactly(tmp_path, reference):
    config, out = write_config(tmp_path, workers=2)  # Ctrl-C reaches the DataLoader workers too
    trace = tmp_path / "trace"
    proc = start_cli(["train", config], failpoints="train.step_done@1=1:sleep(3)", trace=trace)
    try:
        _wait_for_step(trace, 1)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground process group
        assert proc.wait(timeout=120) == 128 + signal.SIGINT
    finally:
        kill_group(proc)
    _, err = output_of(proc)
    assert "Traceback" not in err, err
    assert "Ctrl-C: saving a checkpoint at the end of this step" in err
    assert err.strip().splitlines()[-1] == (f"lavila train: interrupted by SIGINT at step 2; checkpoint saved to "
                                            f"{out / 'checkpoint.pt'}; rerun the same command to resume")
    saved = weights(out / "checkpoint.pt")  # the last step of epoch 1: its end (evaluation, snapshots) is not done
    assert saved and not (out / "checkpoint_0001.pt").exists()
    rerun = run_cli(["train", config])
    assert rerun.returncode == 0, rerun.stderr
    assert_like_reference(out, reference)


def test_a_second_ctrl_c_aborts_at_once_without_saving(tmp_path):
    config, out = write_config(tmp_path)
    trace = tmp_path / "trace"
    proc = start_cli(["train", config], failpoints="train.step_done@1=1:sleep(60)", trace=trace)
    try:
        _wait_for_step(trace, 1)
        os.killpg(proc.pid, signal.SIGINT)
        assert wait_until(lambda: "Ctrl-C: saving" in output_of(proc)[1], 30)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert time.monotonic() - t0 < 20  # not after the 60 s step
    finally:
        kill_group(proc)
    _, err = output_of(proc)
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "lavila train: interrupted"
    assert not (out / "checkpoint.pt").exists() and not leftover_temps(out) and not (out / LOCK_NAME).exists()


def test_sigterm_saves_and_ends_with_one_line(tmp_path):
    config, out = write_config(tmp_path, epochs=1)
    trace = tmp_path / "trace"
    proc = start_cli(["train", config], failpoints="train.step_done@1=1:sleep(3)", trace=trace)
    try:
        _wait_for_step(trace, 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        kill_group(proc)
    _, err = output_of(proc)
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("lavila train:")] == [
        f"lavila train: interrupted by SIGTERM at step 2; checkpoint saved to {out / 'checkpoint.pt'}; rerun the "
        "same command to resume"]


# ----------------------------------------------------------------------------------------- two jobs, one folder
@pytest.mark.slow
def test_a_second_job_in_a_running_jobs_folder_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, reference):
    config, out = write_config(tmp_path)
    trace = tmp_path / "trace"
    first = start_cli(["train", config], failpoints="train.step_done@1=1:sleep(60)", trace=trace)
    try:
        _wait_for_step(trace, 1)
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME}
        second = run_cli(["train", config])
        assert second.returncode == 1, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert second.stderr.startswith(f"lavila train: error: {out} is in use by lavila train (pid {first.pid} on ")
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME}
        assert after == before  # nothing resumed, truncated or overwritten
    finally:
        kill_group(first)  # SIGKILL: its lock file stays, naming a dead process
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
    third = run_cli(["train", config])
    assert third.returncode == 0, third.stderr
    assert_like_reference(out, reference)


# --------------------------------------------------------------------------------------------- progress in logs
def test_progress_under_a_pipe_is_plain_lines_not_carriage_returns(tmp_path):
    config, _ = write_config(tmp_path, epochs=1, progress=True, synthetic_eval_groups=0)
    proc = run_cli(["train", config], env={"LAVILA_PROGRESS_INTERVAL": "0"})  # a line per step
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch 1/1: ")]
    assert [line.split(",")[0] for line in lines] == ["epoch 1/1: 1/2 steps (50.0%)", "epoch 1/1: 2/2 steps (100.0%)"]
