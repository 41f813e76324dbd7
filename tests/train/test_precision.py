"""Training precision: ``--precision`` and its legacy keys, CPU bf16 autocast with fp32 loss/weights/AdamW state,
fp16 refused off CUDA, multi-tensor AdamW, and a convergence check that bf16 trains like fp32 on demo-like data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lavila.config import ConfigError
from lavila.demo import demo_values
from lavila.models.checkpoint import read_checkpoint
from lavila.train.loop import amp_settings, train
from lavila.train.optim import build_optimizer
from lavila.train.recipe import build_config
from tests.train.helpers import tiny_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("values, expected", [
    ({}, "auto"),
    ({"precision": "bf16"}, "bf16"),
    ({"disable_amp": True}, "fp32"),  # the narrator recipes' spelling
    ({"amp_dtype": "bf16"}, "bf16"),
    ({"amp_dtype": "auto", "disable_amp": False}, "auto"),  # the pre-training recipes' spelling
    ({"precision": "fp32", "disable_amp": True}, "fp32"),  # agreeing spellings are fine
])
def test_precision_folds_in_the_legacy_keys(tmp_path, values, expected):
    assert tiny_config(tmp_path, **values).requested_precision() == expected


@pytest.mark.parametrize("values, key", [
    ({"precision": "bf16", "disable_amp": True}, "disable_amp"),
    ({"precision": "fp32", "amp_dtype": "fp16"}, "amp_dtype"),
    ({"disable_amp": True, "amp_dtype": "bf16"}, "amp_dtype"),
    ({"precision": "fp16"}, "precision"),  # device cpu in the tiny config
])
def test_contradicting_or_impossible_precision_is_a_one_line_error(tmp_path, values, key):
    with pytest.raises(ConfigError, match=key) as err:
        tiny_config(tmp_path, **values)
    assert "\n" not in str(err.value)


def test_auto_is_bf16_only_where_the_cpu_has_bf16_units(tmp_path, bf16_units):
    cfg = tiny_config(tmp_path)
    bf16_units(False)
    assert amp_settings(cfg, CPU) == (False, torch.float32)
    bf16_units(True)
    assert amp_settings(cfg, CPU) == (True, torch.bfloat16)
    assert amp_settings(tiny_config(tmp_path, precision="fp32"), CPU) == (False, torch.float32)  # explicit wins
    bf16_units(False)
    assert amp_settings(tiny_config(tmp_path, precision="bf16"), CPU) == (True, torch.bfloat16)


def test_fp16_training_off_cuda_is_refused_when_the_device_resolves_to_cpu(tmp_path):
    cfg = tiny_config(tmp_path, precision="fp16", device="auto")  # validation cannot know where auto lands
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        amp_settings(cfg, CPU)


def test_adamw_is_fused_on_cpu_and_matches_the_reference_update():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = build_optimizer([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}],
                          1e-2, (0.9, 0.999), 1e-8, 0.1)
    assert opt.defaults["fused"] is True and not opt.defaults.get("foreach")
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = torch.optim.AdamW(  # the for-loop reference rule
        [{"params": copies[:1], "weight_decay": 0.1}, {"params": copies[1:], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    for step in range(3):
        for group in (params, copies):
            for i, p in enumerate(group):
                p.grad = torch.full_like(p, 0.5 * (i + 1) * (step + 1)) + p.detach()
        opt.step()
        plain.step()
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    opt = build_optimizer([{"params": params}], 1e-3, (0.9, 0.999), 1e-8, 0.1, foreach=False)
    assert opt.defaults["foreach"] is False and not opt.defaults["fused"]  # a caller's explicit choice wins


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adamw_is_fused_on_cuda():
    params = [torch.nn.Parameter(torch.randn(3, 3, device="cuda"))]
    opt = build_optimizer([{"params": params}], 1e-3, (0.9, 0.999), 1e-8, 0.1)
    assert opt.defaults["fused"] is True


def test_bf16_training_step_autocasts_on_cpu_and_keeps_fp32_state(tmp_path, monkeypatch):
    seen: list[torch.dtype | None] = []
    from lavila.train.tasks.dual_encoder import DualEncoderTask

    original = DualEncoderTask.compute_loss

    def spy(self, model, criterion, batch):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        out = original(self, model, criterion, batch)
        assert out["loss"].dtype == torch.float32  # the loss is fp32 even under autocast
        return out

    from lavila.models.losses import CLIPLoss

    in_loss: list[bool] = []
    loss_forward = CLIPLoss.forward

    def loss_spy(self, *args, **kwargs):
        in_loss.append(torch.is_autocast_enabled("cpu"))  # the similarity matmul must not run in bf16
        return loss_forward(self, *args, **kwargs)

    monkeypatch.setattr(DualEncoderTask, "compute_loss", spy)
    monkeypatch.setattr(CLIPLoss, "forward", loss_spy)
    result = train(tiny_config(tmp_path, precision="bf16", epochs=1))
    assert result.global_step == 4 and seen and all(d == torch.bfloat16 for d in seen)
    assert in_loss and not any(in_loss)
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
    state = ckpt["optimizer"]["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32
                         for s in state.values())


# Demo data (synthetic egocentric clips, distinct captions), a smaller tower than the demo's so that 32 steps take
# seconds even where bf16 is emulated: 16 clips memorised over 16 epochs, batch 8, constant lr 2e-3. Measured
# (docs/training.md), mean loss of the last 8 steps, fp32 vs bf16: on an AVX2 CPU (bf16 emulated) seed 0 1.6600 vs
# 1.6268, seed 1 1.6648 vs 1.6434; on an AVX-512-BF16 CPU (real bf16 kernels) seed 0 1.6748 vs 1.8372 (9.7 %),
# seed 1 1.7941 vs 1.7769 (1.0 %). One 32-step run of a tiny model is chaotic: fp32's own seed-to-seed spread
# (1.67 vs 1.79) is as large as the bf16 gap, so the check compares the mean over two seeds (4.2 % there).
CONVERGENCE_TOLERANCE = 0.08  # relative, on the mean over seeds 0 and 1 of the mean loss of the last 8 steps
CONVERGENCE_SEEDS = (0, 1)
CONVERGENCE_STEPS = 32


def _demo_losses(output_dir: Path, precision: str, seed: int = 0) -> list[float]:
    values = demo_values(str(output_dir), CONVERGENCE_STEPS, seed, 8, 0)
    values.update(precision=precision, synthetic_train_size=16, epochs=16, fix_lr=True, project_embed_dim=32,
                  model_overrides=dict(img_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4,
                                       text_width=32, text_layers=1, text_heads=2),
                  print_freq=1, eval_in_middle_freq=-1, eval_at_start=False, synthetic_eval_groups=0,
                  progress=False, plot=False)
    losses: dict[int, float] = {}

    def on_step(step: int, record: dict) -> None:
        if "loss" in record:
            losses[step] = float(record["loss"])

    train(build_config(values), on_step=on_step)
    return [losses[k] for k in sorted(losses)]


@pytest.fixture
def one_thread():
    """Tiny ops gain nothing from intra-op threads; on a busy shared machine two threads make this ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bf16_training_converges_like_fp32_on_demo_data(tmp_path, one_thread):
    finals: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for seed in CONVERGENCE_SEEDS:
        for precision, per_seed in finals.items():
            losses = _demo_losses(tmp_path / f"{precision}_{seed}", precision, seed)
            assert len(losses) == CONVERGENCE_STEPS
            per_seed.append(sum(losses[-8:]) / 8)
    last32, last16 = (sum(v) / len(v) for v in (finals["fp32"], finals["bf16"]))
    assert last32 < math.log(8) - 0.2, finals  # it learned (below chance), so the comparison means something
    assert last16 < math.log(8) - 0.2, finals
    assert abs(last16 - last32) / last32 <= CONVERGENCE_TOLERANCE, finals
