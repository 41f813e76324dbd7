"""CLIP-style dual encoder: TimeSformer video tower + CLIP-text or DistilBERT text tower, projected to one space.

State-dict keys are the reference's (``visual.*``, top-level CLIP text keys or ``textual.*``, ``image_projection``,
``text_projection``, ``logit_scale``), so released checkpoints load strictly after stripping ``module.``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lavila.models.config import ModelConfig
from lavila.models.pretrained import PretrainedMixin
from lavila.models.text import Transformer, build_distilbert, init_clip_text
from lavila.models.timesformer import build_vision_tower


class DualEncoder(PretrainedMixin, nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained_text: bool = False) -> None:
        super().__init__()
        self.config = cfg
        self.norm_embed = cfg.norm_embed
        v, t = cfg.vision, cfg.text
        self.visual = build_vision_tower(v)
        if t.kind == "clip":
            self.context_length = t.context_length
            self.token_embedding = nn.Embedding(t.vocab_size, t.width)
            self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
            self.transformer = Transformer(t.width, t.layers, t.heads)
            self.ln_final = nn.LayerNorm(t.width)
            init_clip_text(self.transformer, self.token_embedding, self.positional_embedding, t.width, t.layers)
        elif t.kind == "distilbert":
            self.textual = build_distilbert(t, pretrained=pretrained_text)
        else:
            raise ValueError(f"{cfg.name}: a dual encoder cannot use a {t.kind!r} text tower")
        text_width = t.width if t.hf_config is None else int(t.hf_config.get("dim", t.width))
        if cfg.projection == "matrix":
            self.image_projection = nn.Parameter(torch.randn(v.width, cfg.embed_dim) * v.width**-0.5)
            self.text_projection = nn.Parameter(torch.randn(text_width, cfg.embed_dim) * text_width**-0.5)
        elif cfg.projection == "frozen_in_time":  # EgoVLP heads
            self.vid_proj = nn.Sequential(nn.Linear(v.width, cfg.embed_dim))
            self.txt_proj = nn.Sequential(nn.ReLU(), nn.Linear(text_width, cfg.embed_dim))
        else:
            raise ValueError(f"{cfg.name}: unknown projection {cfg.projection!r}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature_init)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        if hasattr(self, "transformer"):
            self.transformer.use_checkpoint = enable  # DistilBERT is left as the reference left it

    def freeze_temperature(self) -> None:
        self.logit_scale.requires_grad_(False)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        x = self.visual(image)
        return x @ self.image_projection if hasattr(self, "image_projection") else self.vid_proj(x)

    def encode_text(self, text: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if hasattr(self, "textual"):
            x = self.textual(input_ids=text, attention_mask=attention_mask).last_hidden_state[:, 0]
        else:
            L = text.shape[1]
            if L > self.context_length:
                raise ValueError(f"text has {L} tokens but the context length is {self.context_length}")
            x = self.token_embedding(text) + self.positional_embedding[:L]
            x = self.ln_final(self.transformer(x))
            x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # EOT has the largest id
        return x @ self.text_projection if hasattr(self, "text_projection") else self.txt_proj(x)

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        image_embed = self.encode_image(image)
        text_embed = self.encode_text(text, attention_mask)
        if self.norm_embed:
            image_embed = F.normalize(image_embed, dim=-1)
            text_embed = F.normalize(text_embed, dim=-1)
        return {"image_embed": image_embed, "text_embed": text_embed, "logit_scale": self.logit_scale.exp()}
