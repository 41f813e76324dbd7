"""Tiny training configurations shared by the trainer tests (random weights, 32 px, synthetic clips)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from lavila.models.checkpoint import read_checkpoint, strip_prefix
from lavila.train.config import TrainConfig
from lavila.train.recipe import build_config

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


EGO4D_CLIP = "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"  # Ego4D clip in shared/media: 2 s, 30 fps


def write_tiny_ego4d(folder: Path, media_dir: Path) -> Path:
    """Whole-video Ego4D layout in `folder`: ``videos/clip.mp4`` (use ``video_chunk_len -1``), four human clips in
    ``ego4d_train.pkl`` (one with two paraphrases) and two narrator clips in ``ego4d_train.narrator.pkl``."""
    from lavila.data.metadata import save_metadata

    root = folder / "videos"
    root.mkdir()
    shutil.copy(media_dir / EGO4D_CLIP, root / "clip.mp4")
    human = [("clip", 0.0, 1.0, "#C C stirs the pan"), ("clip", 0.5, 1.5, ["#C C stirs food", "#C C mixes food"]),
             ("clip", 1.0, 1.9, "#C C holds the spoon"), ("clip", 0.2, 1.2, "#C C looks at the pan")]
    narrator = [("clip", 0.0, 1.0, ["#C C stirs the food in the pan", "#C C cooks"], [0.9, 0.5]),
                ("clip", 0.8, 1.8, ["#C C holds a spatula", "#C C stirs"], [0.7, 0.6])]
    save_metadata(human, folder / "ego4d_train.pkl")
    save_metadata(narrator, folder / "ego4d_train.narrator.pkl")
    return folder


def tiny_config(output_dir: str | Path, **overrides: Any) -> TrainConfig:
    return build_config(tiny_values(output_dir, **overrides))


def write_yaml(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    return strip_prefix(read_checkpoint(checkpoint)["state_dict"])


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k} differs (max {(a[k] - b[k]).abs().max().item():.3g})"
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
