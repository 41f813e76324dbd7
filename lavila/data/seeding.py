"""Per-sample seeds: the one source of truth for every random draw made while loading a training sample.

The training loop wraps its dataset in ``lavila.train.state.SeededDataset``, which loads item `i` of epoch `e` under
:func:`seeded_rngs` ``(sample_seed(seed, e, i))``. Inside that block ``torch.initial_seed()`` *is* the sample's seed,
so code in :mod:`lavila.data` that needs more randomness for the same sample (frame jitter, which paraphrase to use,
:class:`lavila.data.robust.ResilientDataset`'s replacement of an undecodable sample) derives it from there with
:func:`mix_seed`. Nothing then depends on the process, the DataLoader worker, the worker count or whether the epoch
was resumed half-way — which is what makes a resumed run end with bit-identical weights.

These functions live in the data layer (not in ``lavila.train``) because datasets need them and may not import the
layers above; ``lavila.train.state`` re-exports them.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def mix_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from non-negative integer keys (``SeedSequence``: nearby keys give unrelated seeds)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one item of one epoch."""
    return mix_seed(seed, epoch, index)


_reseeds = 0  # how many times this process reseeded: a generator derived from torch's seed must be re-derived


def reseed_count() -> int:
    """Changes whenever :func:`seed_everything` runs, even with a seed seen before (the same sample loaded twice).

    ``torch.initial_seed()`` alone cannot tell "reseeded with the same value" from "not reseeded", so a dataset
    that caches a generator derived from it keys the cache on this count too.
    """
    return _reseeds


def seed_everything(seed: int) -> None:
    global _reseeds
    _reseeds += 1
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def current_sample_seed() -> int:
    """The seed the current item is loaded under: ``sample_seed(seed, epoch, index)`` inside ``SeededDataset``.

    Outside it, the process's (or DataLoader worker's) torch seed — still fixed for the process, but then results
    depend on the worker layout.
    """
    return int(torch.initial_seed())


__all__ = ["current_sample_seed", "mix_seed", "reseed_count", "sample_seed", "seed_everything", "seeded_rngs"]
