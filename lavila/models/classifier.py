"""Classification heads on the video tower, for fine-tuning on EK-100 CLS and EGTEA (spec §6.6).

Only the visual tower of a dual encoder survives: projections and the text tower are discarded, and one or several
linear heads read the CLS feature through a shared dropout. State-dict keys are the reference's (``visual.*``,
``fc_cls.weight/bias`` for one head, ``fc_cls.{i}.weight/bias`` for several), so released fine-tuned checkpoints
load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


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


class VideoClassifier(nn.Module):
    """CLS feature -> Dropout(p) -> ``fc_cls`` (one head, ``[B, K]`` logits)."""

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


class VideoClassifierMultiHead(nn.Module):
    """Shared dropout, one head per label space (EK-100: ``[97 verbs, 300 nouns, 3806 actions]``); returns a list."""

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
                     config: Any = None) -> nn.Module:
    """One head for a single class count, the multi-head wrapper for several (``--use-vn-classifier``)."""
    counts = [num_classes] if isinstance(num_classes, int) else list(num_classes)
    if not counts or any(k <= 0 for k in counts):
        raise ValueError(f"num_classes must be positive class counts, got {num_classes}")
    if len(counts) == 1:
        return VideoClassifier(visual, dropout, counts[0], config)
    return VideoClassifierMultiHead(visual, dropout, counts, config)


def is_multihead_state_dict(state_dict: dict) -> bool:
    """Whether a (``module.``-stripped) classifier state dict has several ``fc_cls.{i}`` heads."""
    return any(k.startswith("fc_cls.0.") for k in state_dict)


def head_sizes_from_state_dict(state_dict: dict) -> list[int]:
    """Class count of each head, read from the ``fc_cls`` biases (to rebuild a fine-tuned checkpoint's model)."""
    if "fc_cls.bias" in state_dict:
        return [int(state_dict["fc_cls.bias"].shape[0])]
    sizes = []
    i = 0
    while f"fc_cls.{i}.bias" in state_dict:
        sizes.append(int(state_dict[f"fc_cls.{i}.bias"].shape[0]))
        i += 1
    if not sizes:
        raise ValueError("state dict has no fc_cls head (not a classifier checkpoint)")
    return sizes
