"""Every model name of the reference as one row of configuration data, and one factory that builds them all.

A row is frozen data (open_clip style): the visual tower, the text tower and the head. Overrides given to
:func:`create_model` replace fields by name, which is how tests build tiny random models of the same family and how
a user changes the frame count or projection size. The ``lavila models`` verb prints this table.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from torch import nn


@dataclass(frozen=True)
class VisionConfig:
    """SpaceTimeTransformer (TimeSformer, frozen-in-time divided attention)."""

    img_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    num_frames: int = 4
    mlp_ratio: float = 4.0
    ln_pre: bool = True
    act: str = "quick_gelu"  # "quick_gelu" for OpenAI-initialised towers, "gelu" for timm/ImageNet ones
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class TextConfig:
    """Text tower: the OpenAI CLIP transformer, an HF encoder (DistilBERT) or, for narrators, GPT-2."""

    kind: str = "clip"  # "clip" | "distilbert" | "gpt2"
    width: int = 512
    layers: int = 12
    heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    hf_name: str | None = None  # HF hub name (or local path) of the pretrained text model
    hf_config: dict[str, Any] | None = None  # full HF config dict, used instead of hf_name to build from scratch


@dataclass(frozen=True)
class ModelConfig:
    """One registry row."""

    name: str
    kind: str  # "dual_encoder" | "vclm"
    vision: VisionConfig
    text: TextConfig
    embed_dim: int = 256  # dual encoders: projection size (--project-embed-dim)
    temperature_init: float = 0.07
    norm_embed: bool = False
    projection: str = "matrix"  # "matrix" (x @ P) | "frozen_in_time" (Linear / ReLU+Linear)
    # narrator (VCLM) fields
    num_img_queries: int = 256
    pooler_dim_head: int = 64
    pooler_heads: int = 12
    cross_attn_freq: int = 1
    gated_xattn: bool = True
    pretrained_vision: str | None = None  # OpenAI CLIP name the visual tower is initialised from
    extra: dict[str, Any] = field(default_factory=dict)


_B16 = VisionConfig(img_size=224, patch_size=16, width=768, layers=12, heads=12)
_L14 = VisionConfig(img_size=224, patch_size=14, width=1024, layers=24, heads=16)
_L14_336 = VisionConfig(img_size=336, patch_size=14, width=1024, layers=24, heads=16)
_HF_B16 = VisionConfig(img_size=224, patch_size=16, width=768, layers=12, heads=12, ln_pre=False, act="gelu")

_CLIP_TEXT_B = TextConfig(kind="clip", width=512, layers=12, heads=8)
_CLIP_TEXT_L = TextConfig(kind="clip", width=768, layers=12, heads=12)
_DISTILBERT = TextConfig(kind="distilbert", width=768, layers=6, heads=12, vocab_size=30522,
                         hf_name="distilbert-base-uncased")
_GPT2 = TextConfig(kind="gpt2", width=768, layers=12, heads=12, vocab_size=50257, hf_name="gpt2")
_GPT2_LARGE = TextConfig(kind="gpt2", width=1280, layers=36, heads=20, vocab_size=50257, hf_name="gpt2-large")
_GPT2_XL = TextConfig(kind="gpt2", width=1600, layers=48, heads=25, vocab_size=50257, hf_name="gpt2-xl")


def _dual(name: str, vision: VisionConfig, text: TextConfig, clip: str | None, **kw: Any) -> ModelConfig:
    return ModelConfig(name=name, kind="dual_encoder", vision=vision, text=text, pretrained_vision=clip, **kw)


def _vclm(name: str, vision: VisionConfig, text: TextConfig, clip: str, freq: int) -> ModelConfig:
    return ModelConfig(name=name, kind="vclm", vision=vision, text=text, pretrained_vision=clip,
                       pooler_heads=text.heads, cross_attn_freq=freq)


MODEL_CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        _dual("CLIP_OPENAI_TIMESFORMER_BASE", _B16, _CLIP_TEXT_B, "ViT-B/16"),
        _dual("CLIP_OPENAI_TIMESFORMER_LARGE", _L14, _CLIP_TEXT_L, "ViT-L/14"),
        _dual("CLIP_OPENAI_TIMESFORMER_LARGE_336PX", _L14_336, _CLIP_TEXT_L, "ViT-L/14@336px"),
        _dual("CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", _B16, _DISTILBERT, "ViT-B/16"),
        _dual("CLIP_OPENAI_TIMESFORMER_LARGE_DISTILBERT_BASE", _L14, _DISTILBERT, "ViT-L/14"),
        _dual("CLIP_OPENAI_TIMESFORMER_LARGE_336PX_DISTILBERT_BASE", _L14_336, _DISTILBERT, "ViT-L/14@336px"),
        _dual("CLIP_HF_TIMESFORMER_DISTILBERT_BASE", _HF_B16, _DISTILBERT, None),
        _dual("CLIP_HF_EGOVLP_DISTILBERT_BASE", _HF_B16, _DISTILBERT, None, projection="frozen_in_time"),
        _vclm("VCLM_OPENAI_TIMESFORMER_BASE_GPT2", _B16, _GPT2, "ViT-B/16", 1),
        _vclm("VCLM_OPENAI_TIMESFORMER_BASE_GPT2_XL", _B16, _GPT2_XL, "ViT-B/16", 2),
        _vclm("VCLM_OPENAI_TIMESFORMER_LARGE_GPT2", _L14, _GPT2, "ViT-L/14", 1),
        _vclm("VCLM_OPENAI_TIMESFORMER_LARGE_GPT2_XL", _L14, _GPT2_XL, "ViT-L/14", 2),
        _vclm("VCLM_OPENAI_TIMESFORMER_LARGE_336PX_GPT2_XL", _L14_336, _GPT2_XL, "ViT-L/14@336px", 3),
    ]
}

# Flat override names accepted by create_model, mapped to (sub-config, field). Model-level fields are accepted by
# their own names. Short aliases follow the reference's flags (num_frames = --clip-length, ...).
_VISION_KEYS = {f"vision_{f.name}": f.name for f in fields(VisionConfig)}
_VISION_KEYS.update({"num_frames": "num_frames", "img_size": "img_size", "patch_size": "patch_size",
                     "drop_path_rate": "drop_path_rate"})
_TEXT_KEYS = {f"text_{f.name}": f.name for f in fields(TextConfig)}
_ALIASES = {"project_embed_dim": "embed_dim"}


def list_models() -> list[str]:
    return list(MODEL_CONFIGS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The registry row ``name`` with ``overrides`` applied (flat names, see module docstring)."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_CONFIGS)}")
    return apply_overrides(MODEL_CONFIGS[name], **overrides)


def apply_overrides(cfg: ModelConfig, **overrides: Any) -> ModelConfig:
    """``cfg`` with flat overrides applied; an unknown name is an error that lists the valid ones."""
    name = cfg.name
    vision: dict[str, Any] = {}
    text: dict[str, Any] = {}
    top: dict[str, Any] = {}
    model_fields = {f.name for f in fields(ModelConfig)}
    for key, value in overrides.items():
        key = _ALIASES.get(key, key)
        if key in _VISION_KEYS:
            vision[_VISION_KEYS[key]] = value
        elif key in _TEXT_KEYS:
            text[_TEXT_KEYS[key]] = value
        elif key in model_fields and key not in ("name", "kind", "vision", "text"):
            top[key] = value
        else:
            valid = sorted(set(_VISION_KEYS) | set(_TEXT_KEYS) | model_fields | set(_ALIASES))
            raise TypeError(f"create_model({name!r}): unknown override {key!r}; valid overrides: {', '.join(valid)}")
    return replace(cfg, vision=replace(cfg.vision, **vision), text=replace(cfg.text, **text), **top)


def build_from_config(cfg: ModelConfig, **build_kwargs: Any) -> nn.Module:
    if cfg.kind == "dual_encoder":
        from lavila.models.dual_encoder import DualEncoder

        return DualEncoder(cfg, **build_kwargs)
    if cfg.kind == "vclm":
        from lavila.models.narrator import VCLM

        return VCLM(cfg, **build_kwargs)
    raise ValueError(f"model {cfg.name}: unknown kind {cfg.kind!r}")


def create_model(name: str, pretrained: bool | str = False, **overrides: Any) -> nn.Module:
    """Build a model by registry name.

    Weights are random unless ``pretrained`` is set: then a dual encoder starts from OpenAI CLIP (``True`` = the
    row's HF hub name, or a path to CLIP weights) and pretrained DistilBERT, as the reference's stage 1 does. To
    load a LaViLa checkpoint use ``lavila.models.checkpoint.model_from_checkpoint``.
    """
    cfg = get_config(name, **overrides)
    if not pretrained:
        return build_from_config(cfg)
    if cfg.kind == "dual_encoder":
        from lavila.models.clip_init import init_from_openai_clip

        model = build_from_config(cfg, pretrained_text=cfg.text.kind != "clip")
        if cfg.pretrained_vision:
            init_from_openai_clip(model, None if pretrained is True else pretrained)
        return model
    return build_from_config(cfg, pretrained=pretrained)


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    d["vision"] = VisionConfig(**d["vision"])
    d["text"] = TextConfig(**d["text"])
    return ModelConfig(**d)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["dual_encoder", "vclm"], help="only list this kind")


def run(args: argparse.Namespace) -> int:
    header = f"{'name':<52} {'kind':<12} {'img':>4} {'patch':>5} {'width':>5} {'depth':>5} {'text':<10} " \
             f"{'text_w':>6} {'xattn_freq':>10}"
    print(header)
    print("-" * len(header))
    for cfg in MODEL_CONFIGS.values():
        if args.kind and cfg.kind != args.kind:
            continue
        v, t = cfg.vision, cfg.text
        freq = str(cfg.cross_attn_freq) if cfg.kind == "vclm" else "-"
        print(f"{cfg.name:<52} {cfg.kind:<12} {v.img_size:>4} {v.patch_size:>5} {v.width:>5} {v.layers:>5} "
              f"{t.kind:<10} {t.width:>6} {freq:>10}")
    return 0
