"""Tiny training configurations shared by the trainer tests (random weights, 32 px, synthetic clips)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from lavila.config import TrainConfig, build_config
from lavila.train.state import load_checkpoint_file, strip_module_prefix

TINY_MODEL = {"img_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1, "vision_heads": 2,
              "text_width": 32, "text_layers": 1, "text_heads": 2}


def tiny_values(output_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "model": "CLIP_OPENAI_TIMESFORMER_BASE",
        "model_overrides": dict(TINY_MODEL),
        "dataset": "synthetic",
        "pretrained": False,
        "project_embed_dim": 16,
        "norm_embed": True,
        "contrastive_use_vissl": True,
        "batch_size": 4,
        "epochs": 2,
        "warmup_epochs": 0.5,
        "lr": 1e-3,
        "lr_start": 1e-4,
        "lr_end": 1e-4,
        "workers": 0,
        "synthetic_train_size": 16,
        "synthetic_eval_groups": 0,
        "synthetic_distractor_prob": 0.0,
        "progress": False,
        "plot": False,
        "print_freq": 1000,
        "device": "cpu",
        "output_dir": str(output_dir),
    }
    values.update(overrides)
    return values


def tiny_config(output_dir: str | Path, **overrides: Any) -> TrainConfig:
    return build_config(tiny_values(output_dir, **overrides))


def write_yaml(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    return strip_module_prefix(load_checkpoint_file(checkpoint)["state_dict"])


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k} differs (max {(a[k] - b[k]).abs().max().item():.3g})"
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
