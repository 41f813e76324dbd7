"""Text towers: the OpenAI CLIP text transformer (written here, on SDPA) and HF DistilBERT (from transformers).

The CLIP transformer keeps OpenAI's parameter names (``resblocks.i.attn.in_proj_weight``, ``mlp.c_fc``, ...) so the
released LaViLa checkpoints, which store it at the top level of the dual encoder, load strictly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavila.models.config import TextConfig
from lavila.models.timesformer import QuickGELU


class CausalSelfAttention(nn.Module):
    """nn.MultiheadAttention's parameter layout, computed with causal SDPA (flash-capable on GPU)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, L, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, D))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.use_checkpoint = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def init_clip_text(transformer: Transformer, token_embedding: nn.Embedding, positional_embedding: nn.Parameter,
                   width: int, layers: int) -> None:
    """OpenAI CLIP's text init, so a randomly initialised tower trains like the original."""
    nn.init.normal_(token_embedding.weight, std=0.02)
    nn.init.normal_(positional_embedding, std=0.01)
    proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
    attn_std = width**-0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def distilbert_config(cfg: TextConfig) -> Any:
    """An HF DistilBertConfig from the registry row: the full dict when given, else the row's numbers."""
    from transformers import DistilBertConfig

    if cfg.hf_config is not None:
        known = {k: v for k, v in cfg.hf_config.items() if k not in ("transformers_version", "_name_or_path")}
        return DistilBertConfig(**known)
    return DistilBertConfig(vocab_size=cfg.vocab_size, dim=cfg.width, n_layers=cfg.layers, n_heads=cfg.heads,
                            hidden_dim=4 * cfg.width, max_position_embeddings=512)


def build_distilbert(cfg: TextConfig, pretrained: bool = False) -> nn.Module:
    """DistilBertModel; pretrained weights only on request (hub name or local path in ``cfg.hf_name``)."""
    from transformers import DistilBertModel

    if pretrained:
        if not cfg.hf_name:
            raise ValueError("pretrained DistilBERT requested but the config has no hf_name")
        return DistilBertModel.from_pretrained(cfg.hf_name)
    return DistilBertModel(distilbert_config(cfg))
