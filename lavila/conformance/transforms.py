"""Conformance of the video transforms against `video_transforms_*.pt`.

The checker rebuilds each pipeline from the fixture itself: crop size, frames, constants and the variants named by
the keys (`single_view_antialias_<bool>`, `multi_view_<n>crops_clip<L>_antialias_<bool>`), so a variant with other
sizes or clip lengths is checked the same way. Outputs are compared on the normalised scale with atol 1e-5.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from lavila.conformance import Check
from lavila.models.registry import get_config
from lavila.models.transforms import eval_transform

ATOL = 1e-5
_SINGLE = re.compile(r"^single_view_antialias_(True|False)$")
_MULTI = re.compile(r"^multi_view_(\d+)crops_clip(\d+)_antialias_(True|False)$")


def _err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    if tuple(ours.shape) != tuple(ref.shape):
        return math.inf
    return float((ours.double() - ref.double()).abs().max()) if ref.numel() else 0.0


def check_transforms(path: str | Path) -> list[Check]:
    path = Path(path)
    data = torch.load(path, map_location="cpu", weights_only=False)
    name = path.name
    frames = data["frames_THWC_0_255"]
    crop = int(data["crop_size"])
    mean = data.get("mean_openai")
    std = data.get("std_openai")
    checks: list[Check] = []

    openai = get_config("CLIP_OPENAI_TIMESFORMER_BASE").preprocess
    ref_mean, ref_std = openai.mean, openai.std
    if mean is not None and std is not None:
        const_err = max(abs(a - b) for a, b in zip(list(ref_mean) + list(ref_std), list(mean) + list(std)))
        checks.append(Check.compare(name, "registry preprocess (OpenAI rows)", const_err, 1e-9))
    if "mean_imagenet" in data and "std_imagenet" in data:
        other = get_config("CLIP_HF_TIMESFORMER_DISTILBERT_BASE").preprocess
        im_mean, im_std = other.mean, other.std
        vals = list(data["mean_imagenet"]) + list(data["std_imagenet"])
        const_err = max(abs(a - b) for a, b in zip(list(im_mean) + list(im_std), vals))
        checks.append(Check.compare(name, "registry preprocess (ImageNet rows)", const_err, 1e-9))
    mean = mean if mean is not None else ref_mean
    std = std if std is not None else ref_std

    for key in sorted(data):
        if m := _SINGLE.match(key):
            antialias = m.group(1) == "True"
            ours = eval_transform(crop, mean, std, antialias=antialias)(frames.clone())
            checks.append(Check.compare(name, key, _err(ours, data[key]), ATOL))
        elif m := _MULTI.match(key):
            num_crops, clip_length, antialias = int(m.group(1)), int(m.group(2)), m.group(3) == "True"
            pipeline = eval_transform(
                crop, mean, std, antialias=antialias, num_crops=num_crops, clip_length=clip_length, stack_views=True
            )
            checks.append(Check.compare(name, key, _err(pipeline(frames.clone()), data[key]), ATOL))
    if not any(_SINGLE.match(k) or _MULTI.match(k) for k in data):
        checks.append(Check(name, "no transform outputs found in fixture", math.inf, ATOL, False))
    return checks
