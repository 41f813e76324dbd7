"""The submitit launcher: the SLURM job it would submit (never calling sbatch), and real local/debug runs,
including a pre-emption that saves, requeues and resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from lavila.cli import main as lavila_main
from lavila.train.launch import Trainer, build_executor, submit
from lavila.train.loop import train
from lavila.train.recipe import load_config
from tests.train.helpers import assert_same_weights, tiny_config, weights


def child_pid(parent: int) -> int:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            return int(stat.parent.name)
    raise AssertionError(f"no child process of {parent}")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """submitit's SlurmExecutor only checks that `srun` exists; ours fails if anything calls it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 'must not be called in tests' >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")


def test_slurm_flags_build_the_reference_job(tmp_path, fake_slurm):
    cfg = load_config("configs/pretrain_baseline_tsf_b.yaml", [
        "--nodes", "4", "--ngpus", "8", "--use_volta32", "--partition", "learnlab", "--comment", "cvpr",
        "--timeout", "2880", "--job_dir", str(tmp_path / "jobs" / "%j"), "--cluster", "slurm", "--submit"])
    assert cfg.submit_requested
    executor = build_executor(cfg)
    slurm = executor._executor
    assert executor.cluster == "slurm" and slurm.max_num_timeout == 30
    script = slurm._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=10", "--mem=320GB",
                 "--time=2880", "--partition=learnlab", "--constraint=volta32gb", "--comment=cvpr",
                 "--signal=USR2@120", "--job-name=lavila_dual_encoder"):
        assert f"#SBATCH {line}" in script, line
    flags = ["--nodes", "1", "--cluster", "slurm", "--no-use_volta32", "--job_dir", str(tmp_path)]
    without = build_executor(load_config("configs/pretrain_baseline_tsf_b.yaml", flags))
    assert "constraint" not in without._executor.parameters and "comment" not in without._executor.parameters


@pytest.mark.parametrize(
    ("yaml_extra", "flags", "submits"),
    [
        ({"launcher": "submitit"}, [], True),  # the key in the file submits ...
        ({}, ["--launcher", "submitit"], True),  # ... exactly as the flag does
        ({}, ["--submit"], True),
        ({"launcher": "submitit"}, ["--launcher", "local"], False),  # flags win over the file
        ({"nodes": 4, "partition": "p"}, ["--nodes", "2", "--use_volta32"], False),  # SLURM keys alone never submit
    ],
)
def test_one_submit_rule_for_file_and_flags(tmp_path, monkeypatch, yaml_extra, flags, submits):
    import lavila.train.launch
    import lavila.train.loop
    from tests.train.helpers import tiny_values, write_yaml

    calls = []
    monkeypatch.setattr(lavila.train.launch, "submit", lambda cfg: calls.append(("submit", cfg)))
    monkeypatch.setattr(lavila.train.loop, "train", lambda cfg, **kw: calls.append(("train", cfg)) or _Done())
    path = write_yaml(tmp_path / "r.yaml", {**tiny_values(tmp_path / "out"), **yaml_extra})
    assert lavila_main(["train", str(path), *flags]) == 0
    assert [kind for kind, _ in calls] == ["submit" if submits else "train"]
    assert calls[0][1].launcher == ("submitit" if submits else "local")


class _Done:
    last_eval = None
    global_step = epochs_done = 0
    checkpoint = None


def test_trainer_requeues_itself_with_the_same_config(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    delayed = trainer.checkpoint()
    assert isinstance(delayed.function, Trainer) and delayed.function.cfg == trainer.cfg
    assert delayed.function is not trainer


def test_debug_cluster_runs_the_loop_in_process(tmp_path):
    job = submit(tiny_config(tmp_path / "%j", cluster="debug", launcher="submitit", epochs=1))
    result = job.result()
    assert result["global_step"] == 4 and not result["interrupted"]
    assert (tmp_path / str(job.job_id) / "checkpoint.pt").is_file()  # %j replaced by the job id


def test_preempted_local_job_saves_requeues_and_ends_with_identical_weights(tmp_path):
    values = {"synthetic_train_size": 200, "epochs": 2}  # 100 steps: long enough to be interrupted
    reference = train(tiny_config(tmp_path / "straight", **values))
    job = submit(tiny_config(tmp_path / "job", cluster="local", launcher="submitit", ngpus=1, timeout=10, **values))
    metrics = tmp_path / "job" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    assert metrics.exists(), job.stderr()
    # SLURM signals every task (USR2 before a time-out / pre-emption); submitit's local controller does not
    # forward USR2, so signal its task process directly.
    os.kill(child_pid(int(job.job_id)), signal.SIGUSR2)
    while not job.done() and time.time() < deadline:  # job.result() alone polls with long back-off sleeps
        time.sleep(0.1)
    result = job.result()
    assert result["global_step"] == reference.global_step == 100
    log = job.stdout() + (job.stderr() or "")
    assert "stop signal SIGUSR2" in log and "auto-resuming" in log, log[-2000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 101))
    assert_same_weights(weights(tmp_path / "straight" / "checkpoint.pt"), weights(tmp_path / "job" / "checkpoint.pt"))


def test_narration_jobs_are_submitted_through_the_training_launcher(tmp_path, monkeypatch):
    """One submitit launcher: `lavila narrate --submitit` builds its executor with `make_executor` too."""
    from types import SimpleNamespace

    import lavila.train.launch
    from lavila.narrate.narrate import _submit

    built = []

    class FakeExecutor:
        cluster = "slurm"

        def submit(self, task):
            return SimpleNamespace(job_id="42", task=task)

    def fake_make_executor(folder, cluster, params, **kw):
        built.append((folder, cluster, params))
        return FakeExecutor()

    monkeypatch.setattr(lavila.train.launch, "make_executor", fake_make_executor)
    job = SimpleNamespace(timeout_min=60, nodes=4, gpus_per_node=8, num_workers=9, partition="learnlab",
                          slurm_folder=str(tmp_path / "%j"), cluster="slurm")
    assert _submit(job) == 0
    (folder, cluster, params), = built
    assert (folder, cluster) == (str(tmp_path / "%j"), "slurm")
    assert params == {"timeout_min": 60, "name": "lavila-narrate", "nodes": 4, "tasks_per_node": 8,
                      "gpus_per_node": 8, "cpus_per_task": 10, "mem_gb": 440, "slurm_partition": "learnlab"}


def test_outside_slurm_the_executor_runs_one_node(tmp_path):
    from lavila.train.launch import make_executor

    executor = make_executor(str(tmp_path / "%j"), "debug", {"nodes": 4, "gpus_per_node": 8, "tasks_per_node": 8,
                                                              "timeout_min": 5})
    assert executor.cluster == "debug"
    assert executor._executor.parameters["nodes"] == 1
