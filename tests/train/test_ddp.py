"""torchrun with 2 gloo processes trains the same weights as one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lavila.models.checkpoint import read_checkpoint
from lavila.train.loop import train
from tests.train.helpers import assert_same_weights, tiny_config, tiny_values, weights, write_yaml

# 16 clips: one process x batch 8, or 2 ranks x batch 4, both 2 optimiser steps per epoch on the same samples.
# AdamW is invariant to the gradient's scale and turns float noise in near-zero gradients into full-size steps;
# eps = 1 makes its update ~ lr * gradient, so a wrongly scaled (e.g. not averaged) gradient shows in the weights.
COMMON = {"synthetic_train_size": 16, "epochs": 2, "eps": 1.0, "lr": 0.05, "fix_lr": True, "clip_grad_value": 5.0}


def torchrun(config_path, nproc: int = 2) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--module", "lavila.cli", "train", str(config_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize(
    "variant",
    [
        {},  # DDP + CLIPLoss (VISSL gather with gradient)
        # ZeRO-sharded AdamW + the LaViLa mix (SSLCLIPLoss), stopped mid-epoch and auto-resumed by a second torchrun
        {"use_zero": True, "metadata_aux": ["narrator"], "stop_after_steps": 3},
        {"use_fsdp": True, "synthetic_eval_groups": 1},  # FSDP2 (fully_shard per block) + evaluation
    ],
    ids=["ddp", "zero_ssl_resume", "fsdp"],
)
def test_two_gloo_ranks_equal_one_process(tmp_path, variant):
    distributed_only = ("use_zero", "use_fsdp", "stop_after_steps")
    single_values = {k: v for k, v in dict(COMMON, **variant, batch_size=8).items() if k not in distributed_only}
    train(tiny_config(tmp_path / "single", **single_values))
    cfg = write_yaml(tmp_path / "ddp.yaml", tiny_values(tmp_path / "ddp", **COMMON, **variant, batch_size=4))
    torchrun(cfg)
    if "stop_after_steps" in variant:
        mid = read_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
        assert (mid["epoch"], mid["step_in_epoch"], mid["global_step"]) == (0, 3, 3)  # main + aux: 4 steps/epoch
        values = tiny_values(tmp_path / "ddp", **COMMON, **variant, batch_size=4)
        values.pop("stop_after_steps")
        torchrun(write_yaml(tmp_path / "ddp.yaml", values))  # auto-resumes from ddp/checkpoint.pt
    assert_same_weights(weights(tmp_path / "single" / "checkpoint.pt"), weights(tmp_path / "ddp" / "checkpoint.pt"),
                        atol=1e-6)
    ckpt = read_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["optimizer_layout"] == ("fsdp_fqn" if variant.get("use_fsdp") else "index")
    assert len(ckpt["optimizer"]["state"]) == len(read_checkpoint(tmp_path / "single" / "checkpoint.pt")
                                                  ["optimizer"]["state"])  # ZeRO/FSDP state consolidated
