"""Dual-encoder conformance: ``clip_tiny_*.pt``, ``clip_distilbert_tiny_*.pt`` and ``inflate_*.pt`` fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lavila.conformance import Check
from lavila.models import create_model
from lavila.models.checkpoint import inflate_temporal_embed, load_state_dict_into

ATOL = 1e-5


def overrides_from_fixture_config(config: dict[str, Any]) -> dict[str, Any]:
    """Registry overrides for the generator's tiny config keys (img, patch, width, depth, heads, frames, ...)."""
    out = {
        "img_size": config["img"], "patch_size": config["patch"], "vision_width": config["width"],
        "vision_layers": config["depth"], "vision_heads": config["heads"], "num_frames": config["frames"],
        "embed_dim": config["embed"],
    }
    if "twidth" in config:
        out.update(text_width=config["twidth"], text_layers=config["tlayers"], text_heads=config["theads"],
                   text_vocab_size=config["vocab"], text_context_length=config["ctx"])
    return out


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.double() - b.double()).abs().max().item()


def check_clip(path: Path) -> list[Check]:
    fx = _load(path)
    model = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **overrides_from_fixture_config(fx["config"])).eval()
    load_state_dict_into(model, fx["state_dict"], strict=True)
    name = path.name
    with torch.no_grad():
        video = fx["video_BCTHW"].float()
        image_embed = model.encode_image(video)
        text_embed = model.encode_text(fx["text"])
        out = model(video, fx["text"])
        checks = [
            Check.compare(name, "visual_tokens", _err(model.visual.forward_features(video),
                                                      fx["visual_tokens_no_cls_pool"]), ATOL),
            Check.compare(name, "image_embed", _err(image_embed, fx["image_embed"]), ATOL),
            Check.compare(name, "text_embed", _err(text_embed, fx["text_embed"]), ATOL),
            Check.compare(name, "image_embed_normed", _err(F.normalize(image_embed, dim=-1),
                                                           fx["image_embed_normed"]), ATOL),
            Check.compare(name, "text_embed_normed", _err(F.normalize(text_embed, dim=-1),
                                                          fx["text_embed_normed"]), ATOL),
            Check.compare(name, "logit_scale", _err(out["logit_scale"], fx["logit_scale"]), ATOL),
        ]
        if "video_short_BCTHW" in fx:
            checks.append(Check.compare(name, "image_embed_fewer_frames",
                                        _err(model.encode_image(fx["video_short_BCTHW"].float()),
                                             fx["image_embed_short"]), ATOL))
    return checks


def check_clip_distilbert(path: Path) -> list[Check]:
    fx = _load(path)
    overrides = overrides_from_fixture_config({k: v for k, v in fx["config"].items()
                                               if k not in ("twidth", "tlayers", "theads", "vocab", "ctx")})
    model = create_model("CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", text_hf_config=fx["distilbert_config"],
                         **overrides).eval()
    load_state_dict_into(model, fx["state_dict"], strict=True)
    name = path.name
    with torch.no_grad():
        out = model(fx["video_BCTHW"].float(), fx["text"], fx["attention_mask"])
        image = F.normalize(out["image_embed"], dim=-1)
        text = F.normalize(out["text_embed"], dim=-1)
    return [
        Check.compare(name, "image_embed_normed", _err(image, fx["image_embed_normed"]), ATOL),
        Check.compare(name, "text_embed_normed", _err(text, fx["text_embed_normed"]), ATOL),
        Check.compare(name, "logit_scale", _err(out["logit_scale"], fx["logit_scale"]), ATOL),
    ]


def check_inflate(path: Path) -> list[Check]:
    fx = _load(path)
    name = path.name
    small, large = fx["loaded_4frames"]["visual.temporal_embed"], fx["loaded_8frames"]["visual.temporal_embed"]
    t_small, t_large = small.shape[1], large.shape[1]
    checks = []
    for mode, key in (("bilinear", "bilinear"), ("interp", "interp"), ("zeros", "zeros")):
        ref_key = f"{t_small}to{t_large}_{key}"
        ours = inflate_temporal_embed(small, t_large, mode)
        checks.append(Check.compare(name, ref_key, _err(ours, fx[ref_key]), ATOL))
    ref_key = f"{t_large}to{t_small}_any"
    for mode in ("bilinear", "interp", "zeros"):
        checks.append(Check.compare(name, f"{ref_key}[{mode}]", _err(inflate_temporal_embed(large, t_small, mode),
                                                                      fx[ref_key]), ATOL))
    return checks
