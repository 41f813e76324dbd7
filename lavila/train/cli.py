"""``lavila train CONFIG [--key value ...]``: run a recipe here, under torchrun, or submit it to SLURM.

Overrides use the reference's flag names (``--batch-size 8 --use-checkpoint --use-zero``, ``--metadata-aux a b``,
``--nodes 4 --ngpus 8 --partition p --use_volta32``) or ``--set key=value``. Giving any SLURM flag submits the job
with submitit; otherwise it runs in this process (``torchrun --nproc_per_node=N -m lavila train ...`` for DDP).
``CONFIG`` may be ``-`` to start from the built-in defaults. ``--list-keys`` prints every key, ``--dry-run``
prints the resolved configuration without running.
"""

from __future__ import annotations

import argparse
import sys

from lavila.config import ConfigError, describe_keys, load_config


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.strip().splitlines()[0]
    parser.epilog = "Run `lavila train --list-keys` for every configuration key and its reference flag."
    parser.add_argument("config", nargs="?", help="recipe YAML (configs/pretrain_*.yaml), or - for defaults")
    parser.add_argument("--list-keys", action="store_true", help="list every configuration key and exit")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="--key value overrides (reference flag names) or --set key=value")


def run(args: argparse.Namespace) -> int:
    tokens = list(args.overrides or [])
    dry_run = "--dry-run" in tokens
    tokens = [t for t in tokens if t != "--dry-run"]
    if args.list_keys or "--list-keys" in tokens or any(t in ("-h", "--help") for t in tokens):
        return _list_keys(args.config, [t for t in tokens if t not in ("--list-keys", "-h", "--help")])
    if args.config is None:
        print("lavila train: give a recipe (e.g. configs/pretrain_baseline_tsf_b.yaml) or - for defaults",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(None if args.config == "-" else args.config, tokens)
    except ConfigError as err:
        print(f"lavila train: config error: {err}", file=sys.stderr)
        return 2
    if dry_run:
        print(cfg.to_yaml(), end="")
        print(f"# task: {cfg.task}; launcher: {'submitit' if cfg.submit_requested else 'this process'}")
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
        print(f"lavila train: {err}; resume with the same command", file=sys.stderr)
        return 128 + err.signum if err.signum else 1
    if result.last_eval:
        print("final evaluation: " + ", ".join(f"{k} {v:.2f}" for k, v in result.last_eval.items()))
    print(f"done: {result.global_step} steps, {result.epochs_done} epochs; checkpoint {result.checkpoint}")
    return 0


def _list_keys(config: str | None, tokens: list[str]) -> int:
    try:
        cfg = load_config(None if config in (None, "-") else config, tokens)
    except ConfigError as err:
        print(f"lavila train: config error: {err}", file=sys.stderr)
        return 2
    print(describe_keys(type(cfg.task_cfg)))
    return 0
