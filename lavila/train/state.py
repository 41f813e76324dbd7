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
crash or a pre-emption while saving leaves the previous file intact.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from lavila.atomic import atomic_copy, atomic_save
from lavila.failpoints import failpoint

LAST = "checkpoint.pt"
BEST = "checkpoint_best.pt"


def epoch_checkpoint_name(epoch: int) -> str:
    """Numbered copy for `epoch` finished epochs (reference naming: ep_0005 holds epoch == 5)."""
    return f"checkpoint_{epoch:04d}.pt"


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------------------------


def load_checkpoint_file(path: str | os.PathLike, trusted: bool = False) -> dict[str, Any]:
    """Read a checkpoint (ours or the reference's) on CPU.

    ``weights_only=True`` with ``argparse.Namespace`` allow-listed reads both; a file that needs arbitrary
    unpickling is refused unless `trusted` (``--trust-checkpoint``), because unpickling runs code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal
        if not trusted:
            raise RuntimeError(
                f"{path}: cannot be read with torch.load(weights_only=True): {err}\n"
                "If you trust this file, pass --trust-checkpoint to load it with weights_only=False."
            ) from err
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    if "state_dict" not in ckpt and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"state_dict": ckpt}
    return ckpt


def strip_module_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one item of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch/numpy/python RNGs for the block, then put the caller's states back."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    seed_everything(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


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

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select `epoch`'s permutation and skip this rank's first `start_index` samples of it."""
        super().set_epoch(epoch)
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start_index {start_index} outside this rank's {self.num_samples} samples")
        self.start_index = start_index

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
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
    """Write ``checkpoint.pt`` atomically; snapshot it as best and/or ``checkpoint_{numbered_epoch:04d}.pt``."""
    output_dir = Path(output_dir)
    last = output_dir / LAST
    atomic_save(state, last)
    failpoint("checkpoint.file_written", LAST)  # a kill here: checkpoint.pt is new, its snapshots are not
    written = [last]
    if is_best:
        atomic_copy(last, output_dir / BEST)
        failpoint("checkpoint.file_written", BEST)
        written.append(output_dir / BEST)
    if numbered_epoch is not None:
        numbered = output_dir / epoch_checkpoint_name(numbered_epoch)
        atomic_copy(last, numbered)
        failpoint("checkpoint.file_written", numbered.name)
        written.append(numbered)
    return written
