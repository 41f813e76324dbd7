"""GPT-2 with Flamingo-style gated cross-attention to visual tokens (the narrator's decoder, spec §6.7).

Built on the maintained HF ``transformers`` GPT-2 classes rather than a forked copy: the embeddings, masks,
attention kernels (SDPA by default), KV cache and gradient checkpointing are HF's; only the block is ours, because
the reference inserts, on every ``layer_idx % freq == 0`` layer and *before* self-attention,

    h = h + tanh(alpha_cattn) * XAttn(ln_cross_attn(h), visual_tokens)
    h = h + tanh(alpha_dense) * FFN_relu2(ln_2_crossattention(h))

(HF's own ``add_cross_attention`` puts one un-gated cross-attention *after* self-attention on every layer, which is
a different model). Parameter and buffer names follow the reference checkpoints exactly, including GPT-2's legacy
``attn.bias`` (uint8 causal tril) and ``attn.masked_bias`` buffers, also under ``crossattention.``: current HF
GPT-2 no longer registers them, but the released state dicts contain them and we load those strictly. The
buffers are never read; HF builds its masks itself.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import GPT2Config
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.gpt2.modeling_gpt2 import (
    GPT2MLP,
    GPT2Attention,
    GPT2Block,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PreTrainedModel,
)

# HF renamed the cache argument ``past_key_values`` -> ``cache`` during 5.x; pass it under the name this version uses.
_CACHE = "cache" if "cache" in inspect.signature(GPT2Attention.forward).parameters else "past_key_values"

# Name fragments that stay trainable when the LM is frozen (reference ``freeze_lm_weights``).
CROSS_ATTN_NAME_PARTS = ("crossattention", "cross_attn", "alpha_cattn", "alpha_dense")


def gated_gpt2_config(
    base: GPT2Config | dict[str, Any], cross_attn_freq: int = 1, gated: bool = True, attn_implementation: str = "sdpa"
) -> GPT2Config:
    """A GPT-2 config with the reference's extra fields (``add_cross_attention_freq``, ``is_tanh_gating``).

    ``add_cross_attention=True`` also makes HF's ``GPT2Model`` build the encoder mask and an ``EncoderDecoderCache``,
    whose cross-attention half holds the visual keys/values computed once per generation.
    """
    d = base.to_dict() if isinstance(base, GPT2Config) else dict(base)
    for key in ("transformers_version", "model_type", "architectures", "_name_or_path", "torch_dtype", "dtype"):
        d.pop(key, None)
    d.update(add_cross_attention=True, add_cross_attention_freq=int(cross_attn_freq), is_tanh_gating=bool(gated),
             use_cache=False)
    if cross_attn_freq < 1:
        raise ValueError(f"cross_attn_freq must be >= 1, got {cross_attn_freq}")
    config = GPT2Config(**d)
    config._attn_implementation = attn_implementation
    return config


def _register_legacy_buffers(attn: nn.Module, n_positions: int) -> None:
    """GPT-2's pre-4.3x buffers, kept only so reference state dicts load with ``strict=True``."""
    tril = torch.tril(torch.ones((n_positions, n_positions), dtype=torch.uint8)).view(1, 1, n_positions, n_positions)
    attn.register_buffer("bias", tril, persistent=True)
    attn.register_buffer("masked_bias", torch.tensor(-1e4), persistent=True)


class VisualCrossAttention(GPT2Attention):
    """GPT-2 cross-attention (same ``q_attn``/``c_attn``/``c_proj`` weights) whose visual keys/values are per *clip*.

    When a clip is decoded as R sequences (return sequences, beams), the text batch has ``N = M*R`` rows but the
    visual tokens only ``M``: keys/values are projected and cached once per clip instead of once per sequence (R
    times less memory and projection work than repeating the visual tokens), and the R sequences of a clip are
    folded into the query length of one SDPA call. Cross-attention has no mask, so this is exactly the per-row
    attention. With ``M == N`` (training) it is plain GPT-2 cross-attention.
    """

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__(config=config, is_cross_attention=True, layer_idx=layer_idx)

    def _visual_kv(self, encoder_hidden_states: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        layers = getattr(getattr(cache, "cross_attention_cache", None), "layers", None)
        if layers is not None and cache.is_updated.get(self.layer_idx):
            return layers[self.layer_idx].keys, layers[self.layer_idx].values
        k, v = self.c_attn(encoder_hidden_states).split(self.split_size, dim=2)
        shape = (*k.shape[:-1], -1, self.head_dim)
        k, v = k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)  # [M, H, S, d]
        if layers is not None:
            k, v = cache.cross_attention_cache.update(k, v, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return k, v

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if encoder_hidden_states is None:
            raise ValueError("cross-attention needs encoder_hidden_states (the visual tokens)")
        if encoder_attention_mask is not None and not _is_all_visible(encoder_attention_mask):
            raise NotImplementedError("masked visual tokens are not supported (the narrator never masks them)")
        cache = kwargs.get(_CACHE, kwargs.get("past_key_values"))
        k, v = self._visual_kv(encoder_hidden_states, cache)
        n, q_len, _ = hidden_states.shape
        m = k.shape[0]
        if n % m:
            raise ValueError(f"{n} text rows cannot be split over {m} clips")
        r = n // m
        q = self.q_attn(hidden_states).view(m, r, q_len, self.num_heads, self.head_dim)
        q = q.permute(0, 3, 1, 2, 4).reshape(m, self.num_heads, r * q_len, self.head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout.p if self.training else 0.0, scale=self.scaling)
        out = out.view(m, self.num_heads, r, q_len, self.head_dim).permute(0, 2, 3, 1, 4).reshape(n, q_len, -1)
        return self.resid_dropout(self.c_proj(out)), None


def _is_all_visible(mask: torch.Tensor) -> bool:
    return bool(mask.all()) if mask.dtype == torch.bool else bool((mask == 0).all())


class GatedGPT2Block(GPT2Block):
    """GPT-2 block with an optional gated cross-attention + squared-ReLU FFN in front of it (see module doc)."""

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        # GPT2Block.__init__ would add HF's post-self-attention cross-attention; build the parts ourselves instead,
        # in the reference's registration order.
        GradientCheckpointingLayer.__init__(self)
        hidden = config.hidden_size
        inner = config.n_inner if config.n_inner is not None else 4 * hidden
        freq = getattr(config, "add_cross_attention_freq", 1)
        self.has_cross_attention = bool(config.add_cross_attention and layer_idx % freq == 0)
        gated = self.has_cross_attention and getattr(config, "is_tanh_gating", False)
        if gated:
            self.alpha_cattn = nn.Parameter(torch.zeros([]))
            self.alpha_dense = nn.Parameter(torch.zeros([]))
        self.ln_1 = nn.LayerNorm(hidden, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config=config, layer_idx=layer_idx)
        _register_legacy_buffers(self.attn, config.n_positions)
        self.ln_2 = nn.LayerNorm(hidden, eps=config.layer_norm_epsilon)
        if self.has_cross_attention:
            self.crossattention = VisualCrossAttention(config, layer_idx)
            _register_legacy_buffers(self.crossattention, config.n_positions)
            self.ln_cross_attn = nn.LayerNorm(hidden, eps=config.layer_norm_epsilon)
            self.mlp_crossattention = GPT2MLP(inner, config)
            self.mlp_crossattention.act = ACT2FN["relu2"]  # relu(x)**2
            self.ln_2_crossattention = nn.LayerNorm(hidden, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(inner, config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        past = kwargs.pop("past_key_values", None)
        cache_kw = {_CACHE: cache if cache is not None else past}
        if encoder_hidden_states is not None and self.has_cross_attention:
            residual = hidden_states
            x, _ = self.crossattention(
                self.ln_cross_attn(hidden_states),
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                **cache_kw,
            )
            if hasattr(self, "alpha_cattn"):
                x = torch.tanh(self.alpha_cattn) * x
            hidden_states = residual + x
            residual = hidden_states
            x = self.mlp_crossattention(self.ln_2_crossattention(hidden_states))
            if hasattr(self, "alpha_dense"):
                x = torch.tanh(self.alpha_dense) * x
            hidden_states = residual + x

        residual = hidden_states
        x, _ = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask, use_cache=use_cache,
                         **cache_kw, **kwargs)
        hidden_states = residual + x
        residual = hidden_states
        return residual + self.mlp(self.ln_2(hidden_states))


class GatedGPT2Model(GPT2Model):
    """``GPT2Model`` whose blocks are :class:`GatedGPT2Block`; forward, masks and cache handling are HF's."""

    def __init__(self, config: GPT2Config) -> None:
        # Skip GPT2Model.__init__ (it would allocate and initialise a full set of plain blocks first).
        GPT2PreTrainedModel.__init__(self, config)
        self.embed_dim = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, self.embed_dim)
        self.wpe = nn.Embedding(config.max_position_embeddings, self.embed_dim)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GatedGPT2Block(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self._attn_implementation = config._attn_implementation
        self.post_init()


class GatedGPT2LMHeadModel(GPT2LMHeadModel):
    """GPT-2 LM head on :class:`GatedGPT2Model`; ``lm_head`` is tied to ``transformer.wte`` as in the reference."""

    def __init__(self, config: GPT2Config) -> None:
        GPT2PreTrainedModel.__init__(self, config)
        self.transformer = GatedGPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def freeze_lm_weights(self) -> None:
        """Freeze everything but the cross-attention parts (reference ``freeze_lm_weights``)."""
        for name, param in self.named_parameters():
            param.requires_grad_(any(part in name for part in CROSS_ATTN_NAME_PARTS))

    def load_pretrained_lm(self, name_or_path: str) -> list[str]:
        """Copy every weight of a pretrained HF GPT-2 (hub name or local folder) onto the matching names.

        The cross-attention parts keep their fresh init, as in the reference. Returns the names that were not
        found in the pretrained model (the new parts), for the caller to log.
        """
        pretrained = GPT2LMHeadModel.from_pretrained(name_or_path)
        src = pretrained.state_dict()
        own = self.state_dict()
        missing = [k for k in own if k not in src]
        for key, value in src.items():
            if key in own:
                if own[key].shape != value.shape:
                    raise ValueError(f"pretrained GPT-2 {name_or_path}: {key} has shape {tuple(value.shape)}, "
                                     f"model expects {tuple(own[key].shape)}")
                with torch.no_grad():
                    own[key].copy_(value)
        self.tie_weights()
        return missing
