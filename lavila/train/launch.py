"""SLURM launch through submitit: the reference's ``run_with_submitit_*.py`` as one function.

``lavila train CONFIG --submit --nodes 4 --ngpus 8 --partition learnlab --use_volta32`` (or ``launcher: submitit``
in the recipe: the same rule from the file and from flags) builds an ``AutoExecutor`` with the
reference's job shape (``gpus_per_node = tasks_per_node = ngpus``, ``mem_gb = 40 * ngpus``, 10 CPUs per task,
``slurm_signal_delay_s = 120``, ``slurm_max_num_timeout = 30``) and submits a :class:`Trainer`. Every task exports
the torch.distributed environment (``submitit.helpers.TorchDistributedEnvironment``) and runs the ordinary loop.
On time-out/pre-emption the loop saves ``checkpoint.pt`` at the next step boundary and hands the signal back to
submitit, which calls :meth:`Trainer.checkpoint` and requeues the same trainer; it then auto-resumes exactly.

``cluster: local`` (processes on this machine) and ``cluster: debug`` (in-process) run the same path without
SLURM, which is how the tests exercise it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from lavila.train.config import TrainConfig


def job_folder(cfg: TrainConfig) -> str:
    """submitit's folder; the reference also uses it as ``output_dir`` (``%j`` = job id)."""
    if cfg.job_dir:
        return cfg.job_dir
    return str(Path(cfg.output_dir) / "submitit" / "%j")


def executor_parameters(cfg: TrainConfig) -> dict[str, Any]:
    """The keyword arguments for ``AutoExecutor.update_parameters`` (reference values, spec section 11)."""
    params: dict[str, Any] = {
        "name": f"lavila_{cfg.task or 'train'}",
        "nodes": cfg.nodes,
        "gpus_per_node": cfg.ngpus,
        "tasks_per_node": cfg.ngpus,  # one process per GPU
        "cpus_per_task": cfg.cpus_per_task,
        "mem_gb": cfg.mem_gb_per_gpu * cfg.ngpus,
        "timeout_min": cfg.timeout,
        "slurm_partition": cfg.partition,
        "slurm_signal_delay_s": cfg.slurm_signal_delay_s,
    }
    if cfg.use_volta32:
        params["slurm_constraint"] = "volta32gb"
    if cfg.comment:
        params["slurm_comment"] = cfg.comment
    return params


def make_executor(folder: str, cluster: str | None, params: dict[str, Any], *,
                  slurm_max_num_timeout: int | None = None) -> Any:
    """The one submitit executor every job type (training, narration) is submitted with.

    `params` are ``AutoExecutor.update_parameters`` keys describing the SLURM job; ``cluster`` None auto-detects.
    ``local`` (processes on this machine) and ``debug`` (in-process) run the same path without SLURM: one node,
    and for ``local`` at most the GPUs this machine has.
    """
    import submitit

    extra = {} if slurm_max_num_timeout is None else {"slurm_max_num_timeout": slurm_max_num_timeout}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **extra)
    params = dict(params)
    if executor.cluster != "slurm":
        params["nodes"] = 1
        if executor.cluster == "local" and "gpus_per_node" in params:
            import torch

            params["gpus_per_node"] = min(params["gpus_per_node"], torch.cuda.device_count())
    executor.update_parameters(**params)
    return executor


def build_executor(cfg: TrainConfig) -> Any:
    return make_executor(job_folder(cfg), cfg.cluster, executor_parameters(cfg),
                         slurm_max_num_timeout=cfg.slurm_max_num_timeout)


class Trainer:
    """What submitit runs on every task. Picklable: it carries the config dataclass (plain values only)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def config(self) -> TrainConfig:
        import submitit

        job_id = str(submitit.JobEnvironment().job_id)
        # inside the job: the real output folder, and never submit again
        return dataclasses.replace(self.cfg, output_dir=self.cfg.output_dir.replace("%j", job_id), launcher="local")

    def __call__(self) -> dict[str, Any]:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from lavila.train.loop import train

        result = train(self.config())
        return {"global_step": result.global_step, "epochs_done": result.epochs_done,
                "interrupted": result.interrupted, "best_score": result.best_score,
                "checkpoint": str(result.checkpoint) if result.checkpoint else None, "last_eval": result.last_eval}

    def checkpoint(self) -> Any:
        """Pre-emption/time-out: requeue the same trainer; it auto-resumes from ``output_dir/checkpoint.pt``.

        The loop already saved that checkpoint at the step boundary before handing the signal to submitit.
        """
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.cfg))


def submit(cfg: TrainConfig) -> Any:
    """Submit `cfg` with submitit; returns the job. ``output_dir`` becomes the job folder (reference behaviour)."""
    executor = build_executor(cfg)
    job_cfg = dataclasses.replace(cfg, output_dir=job_folder(cfg) if cfg.job_dir else cfg.output_dir)
    os.makedirs(Path(job_folder(cfg).replace("%j", "")).parent, exist_ok=True)
    job = executor.submit(Trainer(job_cfg))
    print(f"submitted job {job.job_id} to {executor.cluster} ({cfg.nodes if executor.cluster == 'slurm' else 1} "
          f"node(s) x {cfg.ngpus} GPU(s)); logs in {job_folder(cfg).replace('%j', str(job.job_id))}")
    return job
