"""VCLM narrator: video tower -> attention pooler over learned queries -> gated GPT-2 (spec §6.7).

The pooler condenses the ``1 + T*N`` visual tokens (785 for TSF-B at 4 frames) into ``num_img_queries`` (256)
tokens of the text width; the decoder cross-attends to those. State-dict keys follow the reference
(``visual.*``, ``img_queries``, ``img_attn_pool.*``, ``img_attn_pool_norm.*``, ``text_decoder.*``) so released
narrator checkpoints load with ``strict=True`` after stripping ``module.``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config

from lavila.models.config import ModelConfig, TextConfig
from lavila.models.gpt2_gated import GatedGPT2LMHeadModel, gated_gpt2_config
from lavila.models.pretrained import PretrainedMixin
from lavila.models.timesformer import build_vision_tower

log = logging.getLogger(__name__)


class LayerNormNoBias(nn.Module):
    """LayerNorm with a learnable ``gamma`` and a zero ``beta`` *buffer* (CoCa's; both are in the state dict)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta, self.eps)


class AttentionPooler(nn.Module):
    """CoCa-style multi-query cross-attention: H query heads share one key/value head; no residual, no FFN.

    Because K/V are shared, the H heads are folded into the query length, so one SDPA call over
    ``[B, 1, H*Nq, d]`` queries computes exactly softmax(q k^T / sqrt(d)) v per head without repeating K/V.
    """

    def __init__(self, dim: int, context_dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.norm = LayerNormNoBias(dim)
        self.context_norm = LayerNormNoBias(context_dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = queries.shape
        q = self.to_q(self.norm(queries))  # [B, Nq, H*d]
        q = q.view(b, n, self.heads, self.dim_head).transpose(1, 2).reshape(b, 1, self.heads * n, self.dim_head)
        k, v = self.to_kv(self.context_norm(context)).chunk(2, dim=-1)  # [B, Nk, d] each
        out = F.scaled_dot_product_attention(q, k.unsqueeze(1), v.unsqueeze(1))  # [B, 1, H*Nq, d]
        out = out.view(b, self.heads, n, self.dim_head).transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


def gpt2_config_for(text: TextConfig) -> GPT2Config:
    """The decoder's GPT-2 config from the registry's numbers, overlaid by ``text.hf_config`` when given.

    No download: the published GPT-2 sizes are fully described by width/layers/heads/vocab (GPT2Config's other
    defaults are the released ones, n_positions 1024). BOS = EOS = the last id, as GPT-2's ``<|endoftext|>``.
    """
    d: dict[str, Any] = dict(vocab_size=text.vocab_size, n_embd=text.width, n_layer=text.layers, n_head=text.heads)
    d.update(text.hf_config or {})
    last = int(d["vocab_size"]) - 1
    d.setdefault("bos_token_id", last)
    d.setdefault("eos_token_id", last)
    return GPT2Config(**{k: v for k, v in d.items() if k not in ("model_type", "transformers_version")})


class VCLM(PretrainedMixin, nn.Module):
    """Visual-conditional language model (the reference's ``VCLM_HF``).

    ``freeze_*`` mirror ``--freeze-lm-vclm --freeze-visual-vclm --freeze-visual-vclm-temporal`` (all on for the
    released narrators). ``pretrained=True`` copies real GPT-2 weights from ``cfg.text.hf_name`` (hub name or local
    folder, only when asked; the visual tower is initialised from a stage-1 checkpoint by the training task).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        freeze_lm: bool = False,
        freeze_visual: bool = False,
        freeze_visual_temporal: bool = False,
        pretrained: bool = False,
        use_checkpoint: bool = False,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if cfg.text.kind != "gpt2":
            raise ValueError(f"{cfg.name}: a narrator needs a GPT-2 text decoder, got {cfg.text.kind!r}")
        self.config = cfg
        self.visual = build_vision_tower(cfg.vision, use_checkpoint=use_checkpoint)
        gpt2 = gated_gpt2_config(gpt2_config_for(cfg.text), cfg.cross_attn_freq, cfg.gated_xattn, attn_implementation)
        width = gpt2.n_embd
        self.img_queries = nn.Parameter(torch.empty(cfg.num_img_queries, width).normal_(std=width**-0.5))
        self.img_attn_pool = AttentionPooler(width, cfg.vision.width, cfg.pooler_dim_head, cfg.pooler_heads)
        self.img_attn_pool_norm = LayerNormNoBias(width)
        self.text_decoder = GatedGPT2LMHeadModel(gpt2)
        if pretrained:
            if not cfg.text.hf_name:
                raise ValueError(f"{cfg.name}: pretrained=True needs text.hf_name (a GPT-2 hub name or local folder)")
            new = self.text_decoder.load_pretrained_lm(cfg.text.hf_name)
            log.info("loaded GPT-2 weights from %s; %d new tensors keep their init", cfg.text.hf_name, len(new))
        if use_checkpoint:
            self.text_decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if freeze_lm:
            self.text_decoder.freeze_lm_weights()
        if freeze_visual:
            self.visual.freeze_spatial_weights()
        if freeze_visual_temporal:
            self.visual.freeze_temporal_weights()

    @property
    def bos_token_id(self) -> int:
        return int(self.text_decoder.config.bos_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.text_decoder.config.eos_token_id)

    @property
    def max_positions(self) -> int:
        return int(self.text_decoder.config.n_positions)

    def pool_visual_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 1+T*N, Dv]`` normed TSF tokens -> ``[B, num_img_queries, text_width]`` visual tokens."""
        queries = self.img_queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.img_attn_pool_norm(self.img_attn_pool(queries, tokens))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` -> visual tokens ``[B, num_img_queries, text_width]``."""
        return self.pool_visual_tokens(self.visual.forward_features(image))

    def decode(self, text_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, L, V]`` for ``text_ids`` given visual tokens (no text mask, as the reference)."""
        return self.text_decoder(text_ids, encoder_hidden_states=image_tokens).logits

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training forward: ``{"text_tokens_logits": [B, V, L-1], "labels": [B, L-1]}`` for CaptionLoss."""
        image_tokens = self.encode_image(image)
        logits = self.decode(text_ids[:, :-1], image_tokens)
        return {"text_tokens_logits": logits.permute(0, 2, 1), "labels": text_ids[:, 1:]}


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Sorted names of parameters that would receive gradients (tied params listed once, as ``named_parameters``)."""
    return sorted(name for name, p in model.named_parameters() if p.requires_grad)
