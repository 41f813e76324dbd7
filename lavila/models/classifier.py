"""Classification heads on the video tower, for fine-tuning on EK-100 CLS and EGTEA (spec §6.6).

Only the visual tower of a dual encoder survives: projections and the text tower are discarded, and one or several
linear heads read the CLS feature through a shared dropout. State-dict keys are the reference's (``visual.*``,
``fc_cls.weight/bias`` for one head, ``fc_cls.{i}.weight/bias`` for several), so released fine-tuned checkpoints
load strictly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lavila.models.config import ModelConfig
from lavila.models.pretrained import PretrainedMixin


def _head(width: int, num_classes: int) -> nn.Linear:
    fc = nn.Linear(width, num_classes, bias=True)
    nn.init.normal_(fc.weight, mean=0.0, std=0.01)
    nn.init.zeros_(fc.bias)
    return fc


def _width(visual: nn.Module) -> int:
    for attr in ("embed_dim", "num_features", "width"):
        if isinstance(getattr(visual, attr, None), int):
            return getattr(visual, attr)
    raise ValueError(f"cannot tell the feature width of {type(visual).__name__} (no embed_dim/num_features)")


class VideoClassifier(PretrainedMixin, nn.Module):
    """CLS feature -> Dropout(p) -> ``fc_cls`` (one head, ``[B, K]`` logits)."""

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> nn.Module:
        return classifier_from_config(cfg)

    def __init__(self, visual: nn.Module, dropout: float, num_classes: int, config: Any = None) -> None:
        super().__init__()
        self.config = config  # the backbone's registry row, saved with checkpoints so `lavila eval` can rebuild it
        self.visual = visual
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = _head(_width(visual), num_classes)

    @property
    def num_classes(self) -> list[int]:
        return [self.fc_cls.out_features]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(self.dropout(self.visual(video)))


class VideoClassifierMultiHead(PretrainedMixin, nn.Module):
    """Shared dropout, one head per label space (EK-100: ``[97 verbs, 300 nouns, 3806 actions]``); returns a list."""

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> nn.Module:
        return classifier_from_config(cfg)

    def __init__(self, visual: nn.Module, dropout: float, num_classes: Sequence[int], config: Any = None) -> None:
        super().__init__()
        self.config = config
        self.visual = visual
        self.dropout = nn.Dropout(dropout)
        width = _width(visual)
        self.fc_cls = nn.ModuleList(_head(width, k) for k in num_classes)

    @property
    def num_classes(self) -> list[int]:
        return [m.out_features for m in self.fc_cls]

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        # The reference applies the same Dropout module to each head separately (independent masks in training).
        feature = self.visual(video)
        return [m(self.dropout(feature)) for m in self.fc_cls]


def build_classifier(visual: nn.Module, num_classes: Sequence[int] | int, dropout: float = 0.5,
                     config: ModelConfig | None = None) -> nn.Module:
    """One head for a single class count, the multi-head wrapper for several (``--use-vn-classifier``).

    ``config`` is the backbone's row; the classifier records it as a ``classifier`` row with its head sizes, so a
    saved classifier is rebuilt by the factory like any other model.
    """
    counts = [num_classes] if isinstance(num_classes, int) else list(num_classes)
    if not counts or any(k <= 0 for k in counts):
        raise ValueError(f"num_classes must be positive class counts, got {num_classes}")
    if config is not None:
        config = dataclasses.replace(config, kind="classifier", num_classes=tuple(counts), dropout=dropout)
    if len(counts) == 1:
        return VideoClassifier(visual, dropout, counts[0], config)
    return VideoClassifierMultiHead(visual, dropout, counts, config)


def classifier_from_config(cfg: ModelConfig) -> nn.Module:
    """A classifier of a ``classifier`` row: the row's video tower and heads."""
    from lavila.models.timesformer import build_vision_tower

    return build_classifier(build_vision_tower(cfg.vision), cfg.num_classes, cfg.dropout, config=cfg)
