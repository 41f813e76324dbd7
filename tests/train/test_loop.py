"""The training loop: checkpoints, exact resume (step limit and signal), non-finite loss, reference init."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import pytest
import torch

from lavila.models.checkpoint import read_checkpoint
from lavila.train.loop import NonFiniteLossError, TrainingInterrupted, train
from lavila.train.tasks import register_task
from lavila.train.tasks.dual_encoder import DualEncoderTask
from tests.conftest import reference_file
from tests.train.helpers import TINY_MODEL, assert_same_weights, tiny_config, weights

# Every source of randomness the loop must restore: crops (torch), paraphrase choice (python), drop-path (model),
# the narrator mix with its learnable pseudo temperature (criterion state).
RANDOM_EVERYTHING = {"drop_path_rate": 0.5, "model_overrides": dict(TINY_MODEL, vision_layers=2),  # rates 0, 0.5
                     "synthetic_text": "rephraser", "metadata_aux": ["narrator"],
                     "synthetic_train_size": 8}  # 2 x 8 items, batch 4 -> 4 steps per epoch


def _optimizer_state(path):
    return read_checkpoint(path)["optimizer"]["state"]


def test_checkpoint_has_reference_keys_and_ours(tmp_path):
    result = train(tiny_config(tmp_path, epochs=2, synthetic_eval_groups=1))
    assert result.global_step == 8 and result.epochs_done == 2 and not result.interrupted
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    for key in ("epoch", "state_dict", "criterion", "optimizer", "scaler", "best_acc1", "args"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and isinstance(ckpt["args"], argparse.Namespace)
    assert ckpt["args"].model == "CLIP_OPENAI_TIMESFORMER_BASE" and ckpt["args"].clip_length == 4
    assert all(k.startswith("module.") for k in ckpt["state_dict"])  # DDP layout, as released checkpoints
    assert ckpt["step_in_epoch"] == 0 and ckpt["global_step"] == 8 and len(ckpt["rng"]) == 1
    assert ckpt["model_config"]["name"] == "CLIP_OPENAI_TIMESFORMER_BASE"
    assert {"checkpoint_0001.pt", "checkpoint_0002.pt", "checkpoint_best.pt"} <= set(os.listdir(tmp_path))
    assert read_checkpoint(tmp_path / "checkpoint_0001.pt")["epoch"] == 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 9))
    assert sum(r["kind"] == "eval" for r in rows) == 2 and "t2v_R@1" in rows[-1]
    # logit_scale is clamped to [0, ln 100] after every step; frozen when asked
    assert 0 <= weights(tmp_path / "checkpoint.pt")["logit_scale"].item() <= 4.6052


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    straight = train(tiny_config(tmp_path / "a", **RANDOM_EVERYTHING))
    assert straight.global_step == 8
    first = train(tiny_config(tmp_path / "b", stop_after_steps=3, **RANDOM_EVERYTHING))
    assert first.interrupted and first.global_step == 3
    mid = read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert (mid["epoch"], mid["step_in_epoch"]) == (0, 3)  # stopped mid-epoch
    resumed = train(tiny_config(tmp_path / "b", **RANDOM_EVERYTHING))  # auto-resume from output_dir/checkpoint.pt
    assert resumed.global_step == 8 and not resumed.interrupted
    assert_same_weights(weights(tmp_path / "a" / "checkpoint.pt"), weights(tmp_path / "b" / "checkpoint.pt"))
    a, b = _optimizer_state(tmp_path / "a" / "checkpoint.pt"), _optimizer_state(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    crit_a = read_checkpoint(tmp_path / "a" / "checkpoint.pt")["criterion"]
    crit_b = read_checkpoint(tmp_path / "b" / "checkpoint.pt")["criterion"]
    assert torch.equal(crit_a["logit_scale_pseudo"], crit_b["logit_scale_pseudo"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # nothing logged twice, nothing lost


def test_signal_saves_at_the_step_boundary_and_resumes_exactly(tmp_path):
    values = dict(RANDOM_EVERYTHING, epochs=2)
    train(tiny_config(tmp_path / "a", **values))

    def send_signal(step, record):
        if step == 5:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(TrainingInterrupted) as err:
        train(tiny_config(tmp_path / "b", **values), on_step=send_signal)
    assert err.value.signum == signal.SIGUSR1
    saved = read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert saved["global_step"] == 6 and (saved["epoch"], saved["step_in_epoch"]) == (1, 2)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handlers restored
    train(tiny_config(tmp_path / "b", **values))
    assert_same_weights(weights(tmp_path / "a" / "checkpoint.pt"), weights(tmp_path / "b" / "checkpoint.pt"))


class NaNAtStep3(DualEncoderTask):
    calls = 0

    def compute_loss(self, model, criterion, batch):
        out = super().compute_loss(model, criterion, batch)
        type(self).calls += 1
        if type(self).calls == 3:
            out["loss"] = out["loss"] * float("nan")
        return out


register_task("test_nan_dual_encoder", NaNAtStep3)


def test_non_finite_loss_saves_last_good_state_and_stops(tmp_path):
    # Losses are read on the host at log steps only; print_freq 1 makes every step one, as before.
    NaNAtStep3.calls = 0
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 0, step 2 .*checkpoint\.pt"):
        train(tiny_config(tmp_path, task="test_nan_dual_encoder", print_freq=1))
    saved = read_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_non_finite_loss_between_log_steps_keeps_the_last_checkpoint(tmp_path):
    # 4 steps/epoch, NaN at the 7th step (epoch 1, step 2): caught at the epoch's last step, before its update.
    NaNAtStep3.calls = -4
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2 \(global step 6\).*found at the next log step.*"
                                                 r"checkpoint\.pt \(global step 4\) is the last good state"):
        train(tiny_config(tmp_path, task="test_nan_dual_encoder"))
    saved = read_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["global_step"] == 4  # the epoch-end save; the spoilt weights were never written
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the good steps before the bad one are logged


class SyncSpy:
    """Counts host reads of tensor values (what waits for the GPU on CUDA) while armed.

    torch.optim's own reads of each parameter's step counter are left out: that counter lives on the CPU even in a
    GPU run (non-capturable optimisers), so reading it waits for nothing.
    """

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.armed = False
        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            original = getattr(torch.Tensor, name)

            def spy(tensor, *args, _name=name, _original=original, **kwargs):
                caller = sys._getframe(1).f_code
                if self.armed and not (caller.co_name == "_get_value" and "torch/optim" in caller.co_filename):
                    self.calls.append(_name)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, spy)


def test_training_steps_read_no_tensor_on_the_host_outside_log_steps(tmp_path, monkeypatch):
    from lavila.train import loop

    spy = SyncSpy(monkeypatch)
    per_step: dict[int, list[str]] = {}
    original_step = loop.Trainer.train_step

    def unarmed(batches):  # data loading runs on the CPU (workers=0: in this process); it is not a device sync
        while True:
            spy.armed = False
            try:
                batch = next(batches)
            finally:
                spy.armed = True
            yield batch

    def train_step(self, batches):
        spy.armed, spy.calls = True, []
        try:
            return original_step(self, unarmed(batches))
        finally:
            spy.armed = False
            per_step[self.progress.global_step] = (spy.calls, self.log_this_step)

    monkeypatch.setattr(loop.Trainer, "train_step", train_step)
    result = train(tiny_config(tmp_path, epochs=1, print_freq=3, synthetic_train_size=32, clip_grad_value=1.0))
    assert result.global_step == 8
    log_steps = [step for step, (_, logged) in per_step.items() if logged]
    assert log_steps == [3, 6, 8]  # every print_freq steps and the epoch's last
    assert all(calls == [] for calls, logged in per_step.values() if not logged), per_step
    assert all(calls for calls, logged in per_step.values() if logged)  # the spy does see the log-step reads
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 9))  # still one line per step
    assert all(isinstance(r["loss"], float) and isinstance(r["grad_norm"], float) for r in rows)


def _fixture_model_values(cfg: dict) -> dict:
    return {"model_overrides": {"img_size": cfg["img"], "patch_size": cfg["patch"], "vision_width": cfg["width"],
                                "vision_layers": cfg["depth"], "vision_heads": cfg["heads"],
                                "text_width": cfg["twidth"], "text_layers": cfg["tlayers"],
                                "text_heads": cfg["theads"], "text_vocab_size": cfg["vocab"],
                                "text_context_length": cfg["ctx"]},
            "clip_length": cfg["frames"], "project_embed_dim": cfg["embed"]}


def test_reference_checkpoint_loads_as_initialisation(tmp_path):
    fixture = torch.load(reference_file("clip_tiny_public.pt"), map_location="cpu", weights_only=False)
    values = _fixture_model_values(fixture["config"])
    ref = {"state_dict": {f"module.{k}": v for k, v in fixture["state_dict"].items()},
           "args": argparse.Namespace(model="CLIP_OPENAI_TIMESFORMER_BASE", clip_length=fixture["config"]["frames"],
                                      project_embed_dim=fixture["config"]["embed"], norm_embed=True),
           "epoch": 3, "best_acc1": 12.5}
    torch.save(ref, tmp_path / "reference.pth")
    # --init-from: weights only; one step at a negligible lr leaves them at the reference values
    train(tiny_config(tmp_path / "init", init_from=str(tmp_path / "reference.pth"), stop_after_steps=1, lr=1e-12,
                      lr_start=1e-12, lr_end=1e-12, wd=0.0, **values))
    got = weights(tmp_path / "init" / "checkpoint.pt")
    for k, v in fixture["state_dict"].items():
        torch.testing.assert_close(got[k], v, atol=1e-9, rtol=0, msg=k)
    # --resume: the reference's semantics (start at ckpt['epoch'], keep best_acc1, no optimizer in the file)
    result = train(tiny_config(tmp_path / "resume", resume=str(tmp_path / "reference.pth"), epochs=4, **values))
    assert result.global_step == 4 * 4 and result.epochs_done == 4 and result.best_score == 12.5
