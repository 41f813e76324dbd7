"""The configuration dataclasses of every model: a leaf module, so towers, registry and factory can all import it.

A :class:`ModelConfig` is one registry row and carries *everything* needed to use a model: the towers, the head, the
preprocessing of its video input and the tokenizer of its text. Nothing outside the row is allowed to decide these
things (no more "``OPENAI`` in the model name means CLIP normalisation"), so a model saved with
``save_pretrained`` and loaded elsewhere preprocesses and tokenises exactly as it was trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Pixel statistics on the 0..255 scale (the reference normalises unscaled pixels). The OpenAI red mean is
# 0.48145466 * 225, not * 255: the released checkpoints were trained with that typo, so it is kept.
OPENAI_MEAN = (108.3272985, 116.7460125, 104.09373615)
OPENAI_STD = (68.5005327, 66.6321579, 70.32316305)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


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

    kind: str = "clip"  # "clip" | "distilbert" | "gpt2" | "none" (classifiers)
    width: int = 512
    layers: int = 12
    heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    hf_name: str | None = None  # HF hub name (or local path) of the pretrained text model
    hf_config: dict[str, Any] | None = None  # full HF config dict, used instead of hf_name to build from scratch


@dataclass(frozen=True)
class PreprocessConfig:
    """How decoded frames become model input. Crop size and frame count are the vision tower's (one source)."""

    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    antialias: bool = False  # the reference's torchvision 0.11 did not antialias tensor resizes


@dataclass(frozen=True)
class TokenizerConfig:
    """Which tokenizer the text tower was trained with, and the ids a correct one must produce.

    The ids are checked by :func:`lavila.models.tokenizers.get_tokenizer`: an offline machine can silently hand out
    an empty HF tokenizer, and a wrong vocabulary must fail loudly instead of producing metrics on garbage text.
    """

    kind: str = "clip_bpe"  # "clip_bpe" | "wordpiece" | "gpt2" | "word" (the synthetic demo's word vocabulary)
    name: str | None = None  # HF hub name of the tokenizer files (wordpiece/gpt2)
    context_length: int | None = None  # None: the text tower's context length
    vocab_size: int | None = None  # None: not checked (word vocabularies are data)
    bos_id: int | None = None  # [SOT] / [CLS] / GPT-2 BOS
    eos_id: int | None = None  # [EOT] / [SEP] / GPT-2 EOS
    pad_id: int | None = 0


@dataclass(frozen=True)
class ModelConfig:
    """One registry row."""

    name: str
    kind: str  # "dual_encoder" | "vclm" | "classifier"
    vision: VisionConfig
    text: TextConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
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
    # classifier fields: one linear head per class count (several = the EK-100 verb+noun(+action) multi-head)
    num_classes: tuple[int, ...] = ()
    dropout: float = 0.5
    pretrained_vision: str | None = None  # OpenAI CLIP name the visual tower is initialised from

    @property
    def context_length(self) -> int:
        """Tokens per text, as the tokenizer must produce them."""
        return self.tokenizer.context_length or self.text.context_length


_SUB_CONFIGS: dict[str, type] = {"vision": VisionConfig, "text": TextConfig, "preprocess": PreprocessConfig,
                                 "tokenizer": TokenizerConfig}
# Flat override names: `vision_width`, `text_layers`, `preprocess_mean`, `tokenizer_name`, ...; a few short aliases
# follow the reference's flags (num_frames = --clip-length, project_embed_dim = --project-embed-dim).
_FLAT_KEYS: dict[str, tuple[str, str]] = {
    f"{sub}_{f.name}": (sub, f.name) for sub, cls in _SUB_CONFIGS.items() for f in fields(cls)
}
_FLAT_KEYS.update({k: ("vision", k) for k in ("num_frames", "img_size", "patch_size", "drop_path_rate")})
_ALIASES = {"project_embed_dim": "embed_dim"}


def apply_overrides(cfg: ModelConfig, **overrides: Any) -> ModelConfig:
    """``cfg`` with flat overrides applied; an unknown name is an error that lists the valid ones.

    Flat names keep call sites and YAML recipes short (``create_model(name, img_size=32, vision_layers=2)``) while
    the row itself stays nested and frozen.
    """
    subs: dict[str, dict[str, Any]] = {sub: {} for sub in _SUB_CONFIGS}
    top: dict[str, Any] = {}
    model_fields = {f.name for f in fields(ModelConfig)} - {"name", "kind", *_SUB_CONFIGS}
    for key, value in overrides.items():
        key = _ALIASES.get(key, key)
        if key in _FLAT_KEYS:
            sub, name = _FLAT_KEYS[key]
            subs[sub][name] = tuple(value) if isinstance(value, list) else value
        elif key in model_fields:
            top[key] = tuple(value) if isinstance(value, list) else value
        else:
            valid = sorted(set(_FLAT_KEYS) | model_fields | set(_ALIASES))
            raise TypeError(f"model {cfg.name!r}: unknown override {key!r}; valid overrides: {', '.join(valid)}")
    return replace(cfg, **{sub: replace(getattr(cfg, sub), **kw) for sub, kw in subs.items() if kw}, **top)


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists); the inverse of :func:`config_from_dict`."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any], defaults: ModelConfig | None = None) -> ModelConfig:
    """Rebuild a row from :func:`config_to_dict` output.

    Files written before a sub-config existed (no ``preprocess``/``tokenizer``) take it from ``defaults``, the
    registry row of the same name, rather than from the generic dataclass defaults.
    """
    d = dict(d)
    d.pop("extra", None)  # written by older versions, never used
    for sub, cls in _SUB_CONFIGS.items():
        if sub not in d and defaults is not None:
            d[sub] = getattr(defaults, sub)
        elif sub in d and isinstance(d[sub], dict):
            known = {f.name for f in fields(cls)}
            d[sub] = cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d[sub].items() if k in known})
    if "num_classes" in d:
        d["num_classes"] = tuple(d["num_classes"])
    return ModelConfig(**d)
