"""Initialise a TimeSformer dual encoder from OpenAI CLIP, as the reference does before pretraining (spec 6.3).

Two sources are accepted: an OpenAI CLIP checkpoint (the ``clip`` package's ``ViT-B-16.pt`` archive or a plain
state dict in its key layout) and an HF ``CLIPModel`` (hub name such as ``openai/clip-vit-base-patch16``, or a
local folder). HF weights are first converted to the OpenAI layout, so one remapping serves both. The time
attention, temporal embedding and ``norm3`` keep their reference init (the network starts as frame-wise CLIP).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

# registry name of the OpenAI CLIP model -> HF hub name holding the same weights
HF_CLIP_NAMES = {
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}


def _hf_block_to_openai(sd: dict[str, torch.Tensor], src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{dst}.attn.in_proj_weight"] = torch.cat([sd[f"{src}.self_attn.{p}_proj.weight"] for p in "qkv"])
    out[f"{dst}.attn.in_proj_bias"] = torch.cat([sd[f"{src}.self_attn.{p}_proj.bias"] for p in "qkv"])
    for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        out[f"{dst}.{a}.weight"] = sd[f"{src}.{b}.weight"]
        out[f"{dst}.{a}.bias"] = sd[f"{src}.{b}.bias"]


def hf_clip_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert an HF ``CLIPModel`` state dict to the OpenAI ``clip`` layout."""
    out: dict[str, torch.Tensor] = {}
    v, t = "vision_model", "text_model"
    out["visual.class_embedding"] = sd[f"{v}.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
    out["visual.conv1.weight"] = sd[f"{v}.embeddings.patch_embedding.weight"]
    for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out[f"visual.{a}.weight"], out[f"visual.{a}.bias"] = sd[f"{v}.{b}.weight"], sd[f"{v}.{b}.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].T
    out["token_embedding.weight"] = sd[f"{t}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"]
    out["ln_final.weight"], out["ln_final.bias"] = sd[f"{t}.final_layer_norm.weight"], sd[f"{t}.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T
    out["logit_scale"] = sd["logit_scale"]
    for tower, prefix in ((v, "visual.transformer"), (t, "transformer")):
        i = 0
        while f"{tower}.encoder.layers.{i}.layer_norm1.weight" in sd:
            _hf_block_to_openai(sd, f"{tower}.encoder.layers.{i}", f"{prefix}.resblocks.{i}", out)
            i += 1
    return out


def load_clip_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """OpenAI-layout CLIP weights from an OpenAI ``.pt`` file, an HF folder or an HF hub name."""
    path = Path(source)
    if path.is_file():
        try:  # the clip package ships TorchScript archives
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        except RuntimeError:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in sd.items()}
    from transformers import CLIPModel

    hf = CLIPModel.from_pretrained(str(source))  # a local folder, or the hub on a user's machine
    return hf_clip_to_openai({k: v.float() for k, v in hf.state_dict().items()})


def remap_visual(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI visual keys -> SpaceTimeTransformer keys (the reference's ``remap_keys``)."""
    out = {
        "cls_token": sd["visual.class_embedding"].reshape(1, 1, -1),
        "pos_embed": sd["visual.positional_embedding"].unsqueeze(0),
        "patch_embed.proj.weight": sd["visual.conv1.weight"],
        "ln_pre.weight": sd["visual.ln_pre.weight"], "ln_pre.bias": sd["visual.ln_pre.bias"],
        "norm.weight": sd["visual.ln_post.weight"], "norm.bias": sd["visual.ln_post.bias"],
    }
    names = {"attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
             "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
             "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias", "ln_2.weight": "norm2.weight",
             "ln_2.bias": "norm2.bias", "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
             "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}
    prefix = "visual.transformer.resblocks."
    for key, value in sd.items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            out[f"blocks.{idx}.{names[rest]}"] = value
    return out


def init_from_openai_clip(model: nn.Module, source: str | Path | None = None) -> dict[str, Any]:
    """Copy CLIP weights into a dual encoder (visual always; CLIP text tower when it has one). Returns a report."""
    cfg = model.config
    source = source or HF_CLIP_NAMES.get(cfg.pretrained_vision or "")
    if source is None:
        raise ValueError(f"{cfg.name} is not initialised from OpenAI CLIP")
    sd = load_clip_state_dict(source)
    visual = remap_visual(sd)
    missing, unexpected = model.visual.load_state_dict(visual, strict=False)
    if unexpected:
        raise ValueError(f"CLIP weights from {source} do not fit {cfg.name}'s video tower: {unexpected[:10]}")
    report: dict[str, Any] = {"source": str(source), "visual_not_loaded": sorted(missing)}
    if hasattr(model, "transformer"):  # CLIP text tower
        text = {k: v for k, v in sd.items() if k.startswith(("transformer.", "token_embedding", "positional_embedding",
                                                                "ln_final"))}
        own = model.state_dict()
        bad = [k for k, v in text.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ValueError(f"CLIP text weights from {source} do not fit {cfg.name}: {bad[:10]}")
        model.load_state_dict(text, strict=False)
    if hasattr(model, "image_projection") and sd["visual.proj"].shape == model.image_projection.shape \
            and hasattr(model, "transformer") and sd["text_projection"].shape == model.text_projection.shape:
        with torch.no_grad():  # project_embed_dim equal to CLIP's: the reference keeps CLIP's heads and temperature
            model.image_projection.copy_(sd["visual.proj"])
            model.text_projection.copy_(sd["text_projection"])
            model.logit_scale.copy_(sd["logit_scale"])
        report["projections"] = "copied from CLIP"
    else:
        report["projections"] = f"random (embed dim {cfg.embed_dim}), logit_scale ln(1/{cfg.temperature_init})"
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1.0 / cfg.temperature_init))
    return report
