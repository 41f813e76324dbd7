"""Fine-tuning tasks: one training step of each benchmark on tiny real-format data, the reference's parameter
groups / learning-rate quirk, and a short run through the shared training loop whose checkpoint `lavila eval` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lavila.train.optim import set_lr
from lavila.train.recipe import load_config
from lavila.train.tasks.finetune import ClassificationFinetuneTask, ClassificationLoss, RetrievalFinetuneTask

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def make_cfg(name: str, tmp_path, tiny_checkpoint, bpe_path, *extra: str):
    return load_config(CONFIGS / f"finetune_{name}.yaml", [
        "--pretrain-model", str(tiny_checkpoint), "--bpe-path", str(bpe_path), "--clip-length", "4",
        "--batch-size", "2", "--workers", "0", "--epochs", "1", "--eval-every", "1", "--output-dir",
        str(tmp_path / "out"), "--device", "cpu", "--no-progress", "--no-plot", "--use-checkpoint", "false", *extra])


def paths(name, ek100, charades, egtea):
    if name == "ek100_mir":
        return ["--root", str(ek100["root"]), "--metadata", str(ek100["mir_train_csv"]),
                "--metadata-val", str(ek100["mir_csv"])]
    if name == "ek100_cls":
        return ["--root", str(ek100["root"]), "--metadata", str(ek100["train_csv"]),
                "--metadata-val", str(ek100["val_csv"]), "--num-classes", "97", "300", "4"]
    if name == "charades_ego":
        return ["--root", str(charades["root"]), "--metadata", str(charades["train"]),
                "--metadata-val", str(charades["csv"]), "--classes", str(charades["classes"])]
    return ["--root", str(egtea["root"]), "--metadata", str(egtea["split"]), "--metadata-val", str(egtea["split"]),
            "--classes", str(egtea["actions"]), "--num-classes", "3"]


def test_recipes_carry_the_reference_hyperparameters():
    cls = load_config(CONFIGS / "finetune_ek100_cls.yaml")
    o = cls
    assert (cls.lr, cls.wd, cls.clip_length, cls.clip_stride, cls.epochs) == (3e-3, 4e-5, 16, 2, 100)
    assert o.use_sgd and o.lr_multiplier_on_backbone == 0.1 and o.head_lr_quirk and o.label_smoothing == 0.1
    assert o.num_classes == [97, 300, 3806] and o.use_vn_classifier and o.dropout_rate == 0.5
    mir = load_config(CONFIGS / "finetune_ek100_mir.yaml")
    assert (mir.lr, mir.lr_start, mir.lr_end, mir.epochs, mir.clip_length) == (3e-5, 1e-6, 1e-5, 100, 16)
    assert mir.margin == 0.2 and mir.drop_path_rate == 0.1
    egtea = load_config(CONFIGS / "finetune_egtea.yaml")
    assert egtea.num_classes == [106] and (egtea.eval_num_clips, egtea.eval_num_crops) == (
        10, 3)
    assert load_config(CONFIGS / "finetune_charades_ego.yaml").epochs == 10


@pytest.mark.parametrize("name", ["ek100_mir", "charades_ego", "ek100_cls", "egtea"])
def test_one_training_step(name, tmp_path, ek100, charades, egtea, tiny_checkpoint, bpe_path):
    cfg = make_cfg(name, tmp_path, tiny_checkpoint, bpe_path, *paths(name, ek100, charades, egtea))
    task = (RetrievalFinetuneTask if name in ("ek100_mir", "charades_ego") else ClassificationFinetuneTask)(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    criterion = task.build_criterion()
    data = task.build_train_dataset()
    batch = task.collate([data[0], data[1]])
    assert batch["video"].shape == (2, 3, 4, 32, 32)
    groups = task.param_groups(model, criterion)
    opt = task.build_optimizer(groups) if hasattr(task, "build_optimizer") else torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=1e-3)
    set_lr(opt, 1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = task.compute_loss(model, criterion, batch)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    out["loss"].backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(n.startswith("visual.") for n in changed)
    if name in ("ek100_mir", "charades_ego"):
        assert not model.logit_scale.requires_grad  # frozen temperature in retrieval fine-tuning
        assert ("max_margin_loss" in out) == (name == "ek100_mir")
    else:
        assert any(n.startswith("fc_cls") for n in changed)
    if name == "ek100_cls":
        # V+N+A: three heads, the loss is their sum; targets: action "10:3" (id 1) -> verb 10, noun 3
        assert set(out) >= {"verb_loss", "noun_loss", "action_loss"}
        assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in ("verb_loss", "noun_loss",
                                                                                   "action_loss")), rel=1e-5)


def test_mir_training_text_is_a_positive_sentence(tmp_path, ek100, charades, egtea, tiny_checkpoint, bpe_path):
    from lavila.models.tokenizers import get_tokenizer

    cfg = make_cfg("ek100_mir", tmp_path, tiny_checkpoint, bpe_path, *paths("ek100_mir", ek100, charades, egtea))
    task = RetrievalFinetuneTask(cfg)
    data = task.build_train_dataset()
    tok = get_tokenizer("CLIP_OPENAI_TIMESFORMER_BASE", bpe_path)
    # clip 1 ("pour sauce") has relevancy 1 to "pour sauce" and 0.5 to "cut bread": both are > 0.1
    allowed = {tuple(tok(["pour sauce"])[0].tolist()): 1.0, tuple(tok(["cut bread"])[0].tolist()): 0.5}
    seen = set()
    for seed in range(12):
        np.random.seed(seed)
        item = data[1]
        key = tuple(item["text"].tolist())
        assert key in allowed and item["relevancy"] == allowed[key]
        seen.add(key)
    assert len(seen) == 2


def test_classification_groups_apply_the_backbone_multiplier_to_the_head(tmp_path, ek100, charades, egtea,
                                                                          tiny_checkpoint, bpe_path):
    base = paths("egtea", ek100, charades, egtea)
    task = ClassificationFinetuneTask(make_cfg("egtea", tmp_path, tiny_checkpoint, bpe_path, *base))
    model = task.build_model()
    groups = task.param_groups(model, task.build_criterion())
    assert [g["name"] for g in groups] == ["backbone_decay", "backbone_no_decay", "head_weight", "head_bias"]
    assert [g["lr_scale"] for g in groups] == [0.1] * 4  # reference quirk: the head gets 0.1 too
    assert groups[2]["weight_decay"] == 4e-5 and groups[3]["weight_decay"] == 0.0
    assert groups[2]["params"][0] is model.fc_cls.weight
    opt = task.build_optimizer(groups)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    set_lr(opt, 3e-3)  # what the loop does every step with the schedule's value
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3e-4] * 4)
    intended = ClassificationFinetuneTask(make_cfg("egtea", tmp_path, tiny_checkpoint, bpe_path, *base,
                                                   "--head-lr-quirk", "false"))
    g2 = intended.param_groups(model, intended.build_criterion())
    assert [g["lr_scale"] for g in g2] == [0.1, 0.1, 1.0, 1.0]


def test_classification_loss_label_smoothing():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    # smoothing 0.1 over 3 classes: target distribution [0.9 + 0.1/3, 0.1/3, 0.1/3]
    logp = torch.log_softmax(logits, dim=-1)[0]
    expected = -((0.9 + 0.1 / 3) * logp[0] + 0.1 / 3 * logp[1] + 0.1 / 3 * logp[2])
    out = ClassificationLoss(0.1)(logits, [torch.tensor([0])])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["action_acc1"].item() == 100.0


def test_egtea_finetune_through_the_training_loop_then_lavila_eval(tmp_path, ek100, charades, egtea,
                                                                   tiny_checkpoint, bpe_path):
    from lavila.cli import main as cli_main
    from lavila.train.loop import train

    cfg = make_cfg("egtea", tmp_path, tiny_checkpoint, bpe_path, *paths("egtea", ek100, charades, egtea),
                   "--lr", "1e-2", "--lr-end", "1e-3", "--warmup-epochs", "0", "--eval-num-clips", "2",
                   "--eval-num-crops", "3", "--clip-stride", "2",
                   "--max-decode-failures", "0.5")  # 1 of 4 clips is corrupt: over the default 5% threshold
    result = train(cfg)
    assert result.global_step == 2  # 4 clips (the corrupt one replaced by ResilientDataset) / batch 2
    assert result.last_eval is not None and result.last_eval["num_failed"] == 1.0
    ckpt = tmp_path / "out" / "checkpoint.pt"
    # the recipe's SGD (use_sgd) reached the loop: momentum buffers, no Adam moments
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["optimizer"]["state"]
    assert state and all("momentum_buffer" in s and "exp_avg" not in s for s in state.values())
    out = tmp_path / "ft_eval.json"
    rc = cli_main(["eval", "egtea", "--checkpoint", str(ckpt), "--metadata", str(egtea["split"]),
                   "--root", str(egtea["root"]), "--classes", str(egtea["actions"]), "--clip-length", "4",
                   "--num-clips", "2", "--no-cache", "--workers", "0", "--output", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["model_kind"] == "classifier" and rec["protocol"]["view_pool"] == "mean"
    assert rec["protocol"]["center_crop_first"] is True and rec["num_failed"] == 1
    # same protocol (2 clips x 3 centre-first crops, mean of logits) as the task's own evaluation
    assert rec["metrics"]["mean_class_acc"] == pytest.approx(result.last_eval["mean_class_acc"])
    assert rec["metrics"]["top1"] == pytest.approx(result.last_eval["top1"])
