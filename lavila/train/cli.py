"""``lavila train CONFIG [--key value ...]``: run a recipe here, under torchrun, or submit it to SLURM.

``CONFIG`` is a recipe YAML (``configs/*.yaml``) or ``-`` for the built-in defaults. Flags override its keys with
the reference's names (``--batch-size 8 --use-checkpoint --use-zero``, ``--metadata-aux a b``, ``--use_volta32``)
or ``--set key=value``; the task's config class (``lavila.train.tasks``) decides which keys exist. The job runs in
this process (``torchrun --nproc_per_node=N -m lavila.cli train ...`` for DDP) unless ``launcher: submitit``
(``--launcher submitit`` or ``--submit``) sends it to SLURM. ``--list-keys`` prints every key, ``--dry-run`` the
resolved configuration as YAML, without running.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from lavila.errors import ConfigError
from lavila.train.config import TrainConfig
from lavila.train.recipe import load_config


@dataclass
class TrainRun:
    """What ``lavila train`` was asked to do: the resolved config, and whether only to print it."""

    config: TrainConfig
    dry_run: bool = False


def parse_train(argv: Sequence[str], *, prog: str = "lavila train") -> TrainRun:
    """``CONFIG [--dry-run] [flags]`` -> TrainRun. The task is chosen first (``task:``/``--task``/model kind), then
    its config class parses the file and the flags."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    dry_run = "--dry-run" in argv[:end]
    argv = [t for i, t in enumerate(argv) if not (i < end and t == "--dry-run")]
    config = argv.pop(0) if argv and (argv[0] == "-" or not argv[0].startswith("-")) else None
    asks_help = any(t in ("-h", "--help", "--list-keys") for t in argv)
    if config is None and not asks_help:
        raise ConfigError("give a recipe (e.g. configs/pretrain_baseline_tsf_b.yaml) or - for the defaults")
    cfg = load_config(None if config in (None, "-") else config, argv, prog=f"{prog} CONFIG")
    return TrainRun(cfg, dry_run)


def run_train(run: TrainRun) -> int:
    cfg = run.config
    if run.dry_run:
        print(cfg.to_yaml(), end="")
        print(f"# task: {cfg.task}; launcher: {'submitit (SLURM)' if cfg.submit_requested else 'this process'}")
        return 0
    if cfg.submit_requested:
        from lavila.train.launch import submit

        submit(cfg)
        return 0
    from lavila.train.loop import NonFiniteLossError, TrainingInterrupted, train

    try:
        result = train(cfg)
    except NonFiniteLossError as err:
        print(f"lavila train: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        print(f"lavila train: {err}", file=sys.stderr)  # one line: where it stopped, what was saved, how to resume
        return 128 + err.signum if err.signum else 1
    if result.last_eval:
        print("final evaluation: " + ", ".join(f"{k} {v:.2f}" for k, v in result.last_eval.items()))
    print(f"done: {result.global_step} steps, {result.epochs_done} epochs; checkpoint {result.checkpoint}")
    return 0
