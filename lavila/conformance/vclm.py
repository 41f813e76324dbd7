"""Narrator conformance: ``vclm_tiny_*.pt`` fixtures (VCLM_HF: TimeSformer + attention pooler + gated GPT-2).

The model is rebuilt from the fixture's own ``config``/``gpt2_config``/pooler fields (any generator variant: sizes,
heads, frames, queries, cross-attention frequency, vocab, BOS/EOS), its state dict is loaded strictly, and every
stored output is recomputed: image tokens, caption logits, labels, CaptionLoss, and greedy generation ids + score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lavila.conformance import Check
from lavila.models import ModelConfig, build_model, get_config

ATOL_ACT = 1e-5  # activations (README: atol 1e-5)
ATOL_LOGITS = 1e-4  # logits and losses
RTOL_SCORE = 1e-4  # generation score: exp(mean entropy) ~ vocab size, so compared relatively (README rtol 1e-4)


def config_from_fixture(fx: dict[str, Any]) -> ModelConfig:
    """The registry's VCLM row resized to the fixture's generator config."""
    c, g = fx["config"], dict(fx["gpt2_config"])
    return get_config(
        "VCLM_OPENAI_TIMESFORMER_BASE_GPT2",
        img_size=c["img"], patch_size=c["patch"], vision_width=c["width"], vision_layers=c["depth"],
        vision_heads=c["heads"], num_frames=c["frames"],
        text_width=g["n_embd"], text_layers=g["n_layer"], text_heads=g["n_head"], text_vocab_size=g["vocab_size"],
        text_hf_config=g, text_hf_name=None,
        num_img_queries=int(fx["num_img_queries"]), pooler_dim_head=int(fx["dim_head"]), pooler_heads=int(fx["heads"]),
        cross_attn_freq=int(g.get("add_cross_attention_freq", 1)), gated_xattn=bool(g.get("is_tanh_gating", False)),
    )


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    if tuple(a.shape) != tuple(b.shape):
        return float("inf")
    return (a.double() - b.double()).abs().max().item()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if tuple(a.shape) != tuple(b.shape):
        return float("inf")
    return ((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-12)).max().item()


def check_vclm(path: Path) -> list[Check]:
    from lavila.models.losses import CaptionLoss
    from lavila.narrate.generate import GenerationConfig, generate

    fx = torch.load(path, map_location="cpu", weights_only=False)
    name = Path(path).name
    model = build_model(config_from_fixture(fx)).eval()
    try:
        model.load_state_dict(fx["state_dict"], strict=True)
        checks = [Check.compare(name, "state_dict_strict_load", 0.0, 0.0)]
    except RuntimeError as err:
        return [Check.compare(name, f"state_dict_strict_load: {err}".splitlines()[0][:300], float("inf"), 0.0)]
    video = fx["video_BCTHW"].float()
    with torch.no_grad():
        tokens = model.encode_image(video)
        checks.append(Check.compare(name, "image_tokens", _err(tokens, fx["image_tokens"]), ATOL_ACT))
        out = model(video, fx["caption_ids"])
        checks.append(Check.compare(name, "text_tokens_logits", _err(out["text_tokens_logits"],
                                                                     fx["text_tokens_logits"]), ATOL_LOGITS))
        labels_equal = torch.equal(out["labels"], fx["labels"])
        checks.append(Check.compare(name, "labels", 0.0 if labels_equal else float("inf"), 0.0))
        losses = CaptionLoss(pad_id=0)(out)
        for key, ref in fx["caption_loss"].items():
            ref = torch.as_tensor(ref)
            if key == "ppl":  # exp(mean CE) ~ vocab size: float32 rounding alone exceeds 1e-4 absolute
                checks.append(Check.compare(name, "caption_loss.ppl (relative)", _rel_err(losses[key], ref),
                                            RTOL_SCORE))
            else:
                checks.append(Check.compare(name, f"caption_loss.{key}", _err(losses[key], ref), ATOL_LOGITS))
        gg = fx["greedy_generate"]
        if int(gg["bos"]) != model.bos_token_id or int(gg["eos"]) != model.eos_token_id:
            checks.append(Check.compare(name, "greedy_generate.bos_eos", float("inf"), 0.0))
        for use_cache in (True, False):
            tag = "kv_cache" if use_cache else "recompute"
            gen = generate(model, tokens, GenerationConfig(
                strategy="greedy", max_len=int(gg["max_text_length"]),
                num_return_sequences=int(gg["num_return_sequences"]), use_cache=use_cache))
            ids_equal = tuple(gen.ids.shape) == tuple(gg["ids"].shape) and torch.equal(gen.ids, gg["ids"])
            mismatched = float((gen.ids != gg["ids"]).sum()) if gen.ids.shape == gg["ids"].shape else float("inf")
            checks.append(Check.compare(name, f"greedy_generate.ids[{tag}] (mismatched ids)",
                                        0.0 if ids_equal else mismatched, 0.0))
            checks.append(Check.compare(name, f"greedy_generate.score[{tag}] (relative)",
                                        _rel_err(gen.scores, gg["score"]), RTOL_SCORE))
    return checks
