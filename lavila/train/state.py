"""Never lose work: atomic files, exact RNG and data-position state, and a data order that can resume mid-epoch.

An interrupted run that resumes from ``checkpoint.pt`` must end with the same weights as one that never stopped.
That needs three things besides model/optimiser/scaler state:

* the position in the epoch (optimiser steps done), and a sampler that can skip exactly that many samples of the
  epoch's permutation (:class:`ResumableDistributedSampler`);
* augmentation randomness that does not depend on *when* or *in which worker* a sample is loaded
  (:class:`SeededDataset` seeds every item from ``(seed, epoch, index)``; this also removes the reference's
  correlated numpy jitter across DataLoader workers);
* the process RNG states (torch, CUDA, numpy, python) of every rank, for stochastic layers such as drop-path.

Checkpoints are written with :func:`atomic_save` (temporary file, fsync, ``os.replace``, fsync of the folder), so a
crash or a pre-emption while saving leaves the previous file intact. :class:`Checkpointer` decides what goes into
them (model, criterion, optimiser incl. ZeRO/FSDP consolidation, scaler, RNG of every rank, :class:`Progress`) and
puts it back on resume.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from lavila import dist
from lavila.atomic import atomic_copy, atomic_save
from lavila.data.seeding import sample_seed, seed_everything, seeded_rngs  # noqa: F401 - re-exported
from lavila.failpoints import failpoint
from lavila.train.optim import optimizer_state_for_checkpoint

CHECKPOINT_FORMAT = 1  # "lavila_format" in our checkpoints; reference checkpoints have no such key
LAST = "checkpoint.pt"
BEST = "checkpoint_best.pt"


def epoch_checkpoint_name(epoch: int) -> str:
    """Numbered copy for `epoch` finished epochs (reference naming: ep_0005 holds epoch == 5)."""
    return f"checkpoint_{epoch:04d}.pt"


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------------------------


def add_module_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Reference layout: checkpoints hold the DDP-wrapped model's keys (``module.visual...``)."""
    return {k if k.startswith("module.") else f"module.{k}": v for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------------------------
# RNG state (weights_only-loadable: tensors, ints, floats, tuples only)
# ---------------------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------------------
# Data order that can resume mid-epoch
# ---------------------------------------------------------------------------------------------------------------


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (same permutation per epoch and rank) that can start an epoch at a sample offset.

    It yields ``(epoch, index)`` keys so that :class:`SeededDataset` can seed the item even inside persistent
    workers, which never see ``set_epoch``.
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start_index = 0

    def set_num_samples(self, num_samples: int) -> None:
        """Give every rank `num_samples` per epoch; past the data set's length the epoch's permutation repeats
        (``DistributedSampler`` pads that way), so a fixed step count does not depend on the set's size."""
        self.num_samples = num_samples
        self.total_size = num_samples * self.num_replicas
        self.fixed_length = True

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select `epoch`'s permutation and skip this rank's first `start_index` samples of it."""
        super().set_epoch(epoch)
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start_index {start_index} outside this rank's {self.num_samples} samples")
        self.start_index = start_index

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        if getattr(self, "fixed_length", False):
            order = (torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
                     if self.shuffle else torch.arange(len(self.dataset))).tolist()
            order = (order * -(-self.total_size // len(order)))[: self.total_size]
            indices = order[self.rank: self.total_size: self.num_replicas][self.start_index:]
        else:
            indices = list(super().__iter__())[self.start_index:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class SeededDataset(Dataset):
    """Wraps a dataset so that item `i` of epoch `e` is produced under RNGs seeded from ``(seed, e, i)``.

    Random frame jitter and crops then depend only on the sample, not on the worker that loads it, the rank, the
    number of workers or whether the epoch was resumed half-way. The caller's RNG states are restored afterwards.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        with seeded_rngs(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:  # expose e.g. `tokenizer` of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------------------------


def write_checkpoint(state: dict[str, Any], output_dir: str | os.PathLike, *, is_best: bool = False,
                     numbered_epoch: int | None = None) -> list[Path]:
    """Write ``checkpoint.pt`` and its snapshots (best and/or ``checkpoint_{numbered_epoch:04d}.pt``), atomically.

    The snapshots come first and ``checkpoint.pt`` last: it is the commit point a resume starts from. A kill before
    it leaves the previous ``checkpoint.pt``, so the rerun redoes this save and every snapshot with it; a kill
    after it finds every snapshot it names (``best_acc1``) already on disk. (Written the other way round, a kill
    between the two lost the snapshots for good: the resumed run starts after the epoch that would write them.)
    The first file is written, the others are hard links to it (copies where links are impossible), each an atomic
    replace. Returns ``[checkpoint.pt, *snapshots]``.
    """
    output_dir = Path(output_dir)
    last = output_dir / LAST
    snapshots = []
    if numbered_epoch is not None:
        snapshots.append(output_dir / epoch_checkpoint_name(numbered_epoch))
    if is_best:
        snapshots.append(output_dir / BEST)
    first, *others = [*snapshots, last]
    atomic_save(state, first)
    failpoint("checkpoint.file_written", first.name)
    for path in others:
        atomic_copy(first, path)
        failpoint("checkpoint.file_written", path.name)  # a kill after checkpoint.pt: every file is there
    return [last, *snapshots]


def repair_snapshots(output_dir: str | os.PathLike, ckpt: dict[str, Any], save_freq: int) -> list[Path]:
    """Re-create the snapshots that ``checkpoint.pt`` (read as `ckpt`) implies but that are missing.

    Only older versions (which wrote ``checkpoint.pt`` before its snapshots) can leave such a folder: killed between
    the two, the resumed run never writes them. ``checkpoint.pt`` saved at the end of epoch E is itself the numbered
    snapshot of E (when ``E % save_freq == 0``), and the best one when its last evaluation's score is
    ``best_acc1``. Returns the files linked.
    """
    output_dir = Path(output_dir)
    last = output_dir / LAST
    epoch = int(ckpt.get("epoch", 0))
    if ckpt.get("lavila_format") is None or int(ckpt.get("step_in_epoch", 0)) != 0 or epoch <= 0:
        return []
    wanted = []
    if save_freq > 0 and epoch % save_freq == 0:
        wanted.append(output_dir / epoch_checkpoint_name(epoch))
    score = (ckpt.get("last_eval") or {}).get("score")
    if score is not None and float(ckpt.get("best_acc1", 0.0)) > 0 and float(score) == float(ckpt["best_acc1"]):
        wanted.append(output_dir / BEST)
    repaired = [p for p in wanted if not p.exists()]
    for path in repaired:
        atomic_copy(last, path)
        print(f"=> re-created {path.name}, a snapshot {LAST} names that an interrupted save did not write")
    return repaired


# ---------------------------------------------------------------------------------------------------------------
# Training state: what a checkpoint holds and how a run gets it back
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where the run is; together with the sampler offset it derives, it is the data position of an exact resume."""

    epoch: int = 0  # current epoch index (== finished epochs at an epoch boundary)
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    global_step: int = 0
    best_score: float = 0.0


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_state_dict(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """Full (unsharded, CPU for FSDP) model weights; collective under FSDP."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict()


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (collective): drop-path and friends resume exactly on every rank."""
    if dist.get_world_size() == 1:
        return [capture_rng_state()]
    states: list[Any] = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(states, capture_rng_state())
    return states


class Checkpointer:
    """Saves and restores everything an exact resume needs, in the reference's checkpoint layout plus ours.

    Model, criterion, optimiser (ZeRO shards consolidated, FSDP state as full fully-qualified-name dicts), AMP
    scaler, the RNG states of every rank and the :class:`Progress` the sampler position derives from. :meth:`save`
    is collective (every rank calls it); rank 0 writes the files. `cfg` is the run's ``TrainConfig`` (not imported
    here: the config module imports the tasks, which import this module).
    """

    def __init__(self, cfg: Any, output_dir: Path, *, model: nn.Module, criterion: nn.Module,
                 optimizer: torch.optim.Optimizer, scaler: Any, fsdp: bool, iters_per_epoch: int) -> None:
        self.cfg, self.output_dir = cfg, output_dir
        self.model, self.criterion, self.optimizer, self.scaler = model, criterion, optimizer, scaler
        self.fsdp, self.iters_per_epoch = fsdp, iters_per_epoch

    def save(self, progress: Progress, *, epoch_done: bool, is_best: bool = False,
             last_eval: dict | None = None) -> Path | None:
        """Write ``checkpoint.pt`` (+ best / numbered copies at epoch ends); returns its path on rank 0."""
        cfg, model = self.cfg, self.model
        sd = model_state_dict(model, self.fsdp)
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opt_state = get_optimizer_state_dict(model, self.optimizer,
                                                 options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            opt_state = optimizer_state_for_checkpoint(self.optimizer)
        rng = gather_rng_states()
        path = None
        if dist.is_main_process():
            model_config = getattr(unwrap(model), "config", None)
            if model_config is not None:
                from lavila.models.config import config_to_dict

                model_config = config_to_dict(model_config)
            state = {
                # reference keys
                "epoch": progress.epoch,
                "state_dict": add_module_prefix(sd),
                "criterion": self.criterion.state_dict(),
                "optimizer": opt_state,
                "scaler": self.scaler.state_dict(),
                "best_acc1": progress.best_score,
                "args": cfg.to_namespace(),
                # ours
                "lavila_format": CHECKPOINT_FORMAT,
                "optimizer_layout": "fsdp_fqn" if self.fsdp else "index",
                "config": cfg.to_dict(),
                "model_config": model_config,
                "step_in_epoch": progress.step_in_epoch,
                "global_step": progress.global_step,
                "iters_per_epoch": self.iters_per_epoch,
                "batch_size": cfg.batch_size,
                "update_freq": cfg.update_freq,
                "world_size": dist.get_world_size(),
                "rng": rng,
                "last_eval": last_eval,
            }
            numbered = progress.epoch if epoch_done and progress.epoch % cfg.save_freq == 0 else None
            path = write_checkpoint(state, self.output_dir, is_best=is_best, numbered_epoch=numbered)[0]
        dist.barrier()
        return path

    def restore(self, ckpt: dict[str, Any], *, auto: bool) -> Progress:
        """Auto-resume (our own ``checkpoint.pt``): everything, strictly. ``--resume``: reference semantics (lenient).

        The model weights are loaded by the caller (the task knows how to map them) before wrapping.
        """
        cfg, iters = self.cfg, self.iters_per_epoch
        own = ckpt.get("lavila_format") is not None
        progress = Progress(epoch=int(ckpt.get("epoch", 0)), best_score=float(ckpt.get("best_acc1", 0.0)))
        if ckpt.get("criterion"):
            self.criterion.load_state_dict(ckpt["criterion"], strict=auto)
        if ckpt.get("optimizer") is not None:
            self._load_optimizer(ckpt, own)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if not own:
            progress.global_step = progress.epoch * iters
            return progress
        progress.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
        progress.global_step = int(ckpt.get("global_step", progress.epoch * iters))
        world = dist.get_world_size()
        same_layout = (ckpt.get("iters_per_epoch") == iters and ckpt.get("world_size") == world
                       and ckpt.get("batch_size") == cfg.batch_size)
        if progress.step_in_epoch and not same_layout:
            print(f"warning: resuming mid-epoch with another world size/batch size/update_freq than the checkpoint "
                  f"({ckpt.get('world_size')}x{ckpt.get('batch_size')}); the data position is approximated")
            consumed = progress.step_in_epoch * ckpt.get("update_freq", 1) * ckpt.get("batch_size", 1) * \
                ckpt.get("world_size", 1)
            progress.step_in_epoch = min(consumed // (cfg.update_freq * cfg.batch_size * world), iters)
            if ckpt.get("step_in_epoch") == ckpt.get("iters_per_epoch"):  # stopped after the epoch's last step
                progress.step_in_epoch = iters
            progress.global_step = progress.epoch * iters + progress.step_in_epoch
        rng = ckpt.get("rng") or []
        if len(rng) == world:
            restore_rng_state(rng[dist.get_rank()])
        return progress

    def _load_optimizer(self, ckpt: dict[str, Any], own: bool) -> None:
        state, optimizer = ckpt["optimizer"], self.optimizer
        if self.fsdp:
            if ckpt.get("optimizer_layout") != "fsdp_fqn":
                print("warning: optimizer state was not saved by an FSDP run; starting the optimizer fresh")
                return
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state,
                                     options=StateDictOptions(full_state_dict=True))
            return
        if ckpt.get("optimizer_layout", "index") != "index":
            print("warning: optimizer state was saved by an FSDP run; starting the optimizer fresh")
            return
        # A foreign checkpoint's parameter order may differ from ours: only load when every shape matches.
        params = [p for g in optimizer.param_groups for p in g["params"]]
        saved = state.get("state", {})
        mismatched = [i for i, p in enumerate(params) if i in saved and "exp_avg" in saved[i]
                      and tuple(saved[i]["exp_avg"].shape) != tuple(p.shape)]
        n_saved = sum(len(g["params"]) for g in state.get("param_groups", []))
        if mismatched or n_saved != len(params):
            msg = f"optimizer state does not match this model ({n_saved} saved vs {len(params)} parameters, " \
                  f"{len(mismatched)} shape mismatches)"
            if own:
                raise RuntimeError(msg)
            print(f"warning: {msg}; starting the optimizer fresh")
            return
        optimizer.load_state_dict(state)
