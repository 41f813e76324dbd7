"""Every model name of the reference as one row of configuration data, and one factory that builds them all.

A row is frozen data (open_clip style): the visual tower, the text tower and the head. Overrides given to
:func:`create_model` replace fields by name, which is how tests build tiny random models of the same family and how
a user changes the frame count or projection size. The ``lavila models`` verb (``lavila.cli``) prints this table.
"""

from __future__ import annotations

from typing import Any

from lavila.models.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelConfig,
    PreprocessConfig,
    TextConfig,
    TokenizerConfig,
    VisionConfig,
    apply_overrides,
    config_from_dict,
)

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


# Tokenizers: the CLIP BPE ([SOT] 49406, [EOT] 49407), DistilBERT's uncased WordPiece ([CLS] 101, [SEP] 102) and
# GPT-2's BPE (BOS = EOS = 50256; every GPT-2 size shares the vocabulary).
_CLIP_BPE = TokenizerConfig(kind="clip_bpe", vocab_size=49408, bos_id=49406, eos_id=49407, pad_id=0)
_WORDPIECE = TokenizerConfig(kind="wordpiece", name="distilbert-base-uncased", context_length=77, vocab_size=30522,
                             bos_id=101, eos_id=102, pad_id=0)
_GPT2_BPE = TokenizerConfig(kind="gpt2", name="gpt2", context_length=77, vocab_size=50257, bos_id=50256,
                            eos_id=50256, pad_id=0)
# OpenAI-initialised towers normalise with CLIP's statistics, the timm/ImageNet ones with ImageNet's.
_OPENAI_PIXELS = PreprocessConfig()
_IMAGENET_PIXELS = PreprocessConfig(mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _dual(name: str, vision: VisionConfig, text: TextConfig, clip: str | None, **kw: Any) -> ModelConfig:
    return ModelConfig(name=name, kind="dual_encoder", vision=vision, text=text, pretrained_vision=clip,
                       preprocess=_OPENAI_PIXELS if clip else _IMAGENET_PIXELS,
                       tokenizer=_WORDPIECE if text.kind == "distilbert" else _CLIP_BPE, **kw)


def _vclm(name: str, vision: VisionConfig, text: TextConfig, clip: str, freq: int) -> ModelConfig:
    return ModelConfig(name=name, kind="vclm", vision=vision, text=text, pretrained_vision=clip,
                       preprocess=_OPENAI_PIXELS, tokenizer=_GPT2_BPE, pooler_heads=text.heads, cross_attn_freq=freq)


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

def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The registry row ``name`` with ``overrides`` applied (flat names, see :func:`apply_overrides`)."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_CONFIGS)}")
    return apply_overrides(MODEL_CONFIGS[name], **overrides)


def row_from_dict(d: dict[str, Any]) -> ModelConfig:
    """A saved row (``config.json`` or a checkpoint's ``model_config``), completed from the registry when older."""
    return config_from_dict(d, defaults=MODEL_CONFIGS.get(str(d.get("name"))))
