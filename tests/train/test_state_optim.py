"""Atomic files, RNG/data-position state, parameter groups, the LR schedule."""

from __future__ import annotations

import argparse
import math
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from lavila.models.checkpoint import CheckpointError, read_checkpoint
from lavila.train.optim import LOGIT_SCALE_MAX, LRSchedule, clamp_logit_scale, reference_param_groups
from lavila.train.state import (
    ResumableDistributedSampler,
    SeededDataset,
    atomic_save,
    capture_rng_state,
    restore_rng_state,
    write_checkpoint,
)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"a": torch.ones(2)}, path)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": torch.zeros(2), "b": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]  # no temporary file left behind


def test_numbered_and_best_copies_are_snapshots(tmp_path):
    write_checkpoint({"epoch": 1}, tmp_path, is_best=True, numbered_epoch=1)
    write_checkpoint({"epoch": 2}, tmp_path, numbered_epoch=2)
    load = lambda n: torch.load(tmp_path / n, weights_only=True)["epoch"]  # noqa: E731
    assert (load("checkpoint.pt"), load("checkpoint_best.pt"), load("checkpoint_0001.pt"),
            load("checkpoint_0002.pt")) == (2, 1, 1, 2)


def test_reference_style_checkpoint_loads_without_unpickling_code(tmp_path):
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": {"module.w": torch.ones(1)}, "args": argparse.Namespace(model="X", betas=(0.9, 0.99)),
                "epoch": 3, "best_acc1": 0.5}, path)
    ckpt = read_checkpoint(path)
    assert ckpt["args"].model == "X" and ckpt["epoch"] == 3
    torch.save({"state_dict": {}, "evil": Evil()}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        read_checkpoint(path)
    assert isinstance(read_checkpoint(path, trust=True)["evil"], Evil)


class Evil:
    pass


def test_rng_state_round_trip():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_sampler_resumes_mid_epoch_and_shards_like_distributed_sampler():
    data = list(range(23))
    full = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    order = [i for _, i in full]
    assert sorted(order) == data and all(e == 2 for e, _ in full)
    skipped = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=3)
    skipped.set_epoch(2, start_index=8)
    assert [i for _, i in skipped] == order[8:] and len(skipped) == 15
    ranks = [ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    r0, r1 = ([i for _, i in s] for s in ranks)
    padded = order + order[: 24 - 23]
    assert r0 == padded[0::2] and r1 == padded[1::2]  # a global batch of 2B = B from each rank
    other = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=3)
    other.set_epoch(3)
    assert [i for _, i in other] != order


class RandomItems:
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.rand(1).item(), np.random.rand(), random.random()


def test_seeded_dataset_items_depend_only_on_seed_epoch_index():
    ds = SeededDataset(RandomItems(), seed=5)
    torch.manual_seed(123)
    a = ds[(1, 4)]
    outer = torch.rand(1)
    torch.manual_seed(999)
    b = ds[(1, 4)]
    assert a == b and ds[(2, 4)] != a and ds[(1, 5)] != a
    torch.manual_seed(123)
    ds[(1, 4)]
    assert torch.equal(torch.rand(1), outer)  # the caller's RNG stream is untouched


def test_param_groups_follow_the_reference_rule():
    model = nn.ModuleDict({
        "proj": nn.Linear(4, 4),  # weight decays, bias not
        "ln_final": nn.LayerNorm(4),
        "bn1": nn.Linear(4, 4),  # 'bn' in the name: no decay even for the 2-D weight
        "frozen": nn.Linear(4, 4),
    })
    model.register_parameter("logit_scale", nn.Parameter(torch.zeros(())))
    model["frozen"].requires_grad_(False)
    criterion = nn.Module()
    criterion.logit_scale_pseudo = nn.Parameter(torch.ones(()))
    decay, no_decay = reference_param_groups(model, criterion, 0.01)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(model["proj"].weight)} and decay["weight_decay"] == 0.01
    assert ids(no_decay["params"]) == {id(model["proj"].bias), id(model["ln_final"].weight),
                                       id(model["ln_final"].bias), id(model["bn1"].weight), id(model["bn1"].bias),
                                       id(model.logit_scale), id(criterion.logit_scale_pseudo)}
    assert no_decay["weight_decay"] == 0.0


def test_lr_schedule_warmup_then_cosine_and_fix_lr():
    # 2 epochs x 5 steps, 1 warm-up epoch: np.linspace(0, 1, 5), then 0.1 + 0.45 (1 + cos(pi k / 5)), k = 0..4
    sched = LRSchedule(base=1.0, final=0.1, start=0.0, total_steps=10, warmup_steps=5)
    expected = [0.0, 0.25, 0.5, 0.75, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]
    assert [sched(i) for i in range(10)] == pytest.approx(expected, abs=1e-12)
    fixed = LRSchedule(base=3e-5, final=1e-5, start=1e-6, total_steps=10, warmup_steps=5, fixed=True)
    assert {fixed(i) for i in range(10)} == {3e-5}  # --fix-lr: no warm-up


def test_logit_scale_clamped_to_log_100():
    m = nn.Module()
    m.logit_scale = nn.Parameter(torch.tensor(7.0))
    clamp_logit_scale(m)
    assert m.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX) and LOGIT_SCALE_MAX == pytest.approx(4.6052, 1e-4)
    m.logit_scale.data.fill_(-1.0)
    clamp_logit_scale(m)
    assert m.logit_scale.item() == 0.0
