"""SpaceTimeTransformer: TimeSformer with the "frozen-in-time" divided space-time attention of LaViLa.

Parameter names and shapes follow the reference exactly (``cls_token``, ``pos_embed``, ``temporal_embed``,
``patch_embed.proj``, ``ln_pre``, ``blocks.i.{norm1,attn,timeattn,norm2,mlp,norm3}``, ``norm``) so the released
checkpoints load strictly. Attention runs on ``F.scaled_dot_product_attention`` so that CUDA picks flash/memory-
efficient kernels; an explicit softmax(QK^T)V path is kept for the benchmark and for checking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavila.models.config import VisionConfig


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI CLIP was trained with, so CLIP-initialised towers need it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r} (expected 'quick_gelu' or 'gelu')")


class DropPath(nn.Module):
    """Stochastic depth per sample (used with drop_path_rate 0.1 when fine-tuning)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# Which kernel `auto` picks on CPU, from per-call measurements of TSF-B's three attention shapes (space: 8 x 12 heads
# x 196 queries x 197 keys; time: 392 x 12 x 4 x 5; CLS: 1 query x 785 keys), 2 threads, torch 2.13
# (`python benchmarks/bench_attention.py`, table in docs/performance.md):
# * bf16/fp16 inputs (autocast, bf16 weights): the explicit product wins everywhere, 1.8-2.8x forward + backward
#   (space 11.9 vs 29.9 ms, time 6.2 vs 17.4 ms): SDPA's CPU flash kernel is not tuned for bf16 at these sizes.
# * fp32 with autograd: SDPA wins (space 25.4 vs 32.7 ms, time 22.2 vs 31.7 ms, CLS 1.8 vs 2.2 ms).
# * fp32 without autograd: SDPA's fixed cost per (group, head) dominates for short sequences (time attention:
#   7.8 vs 1.7 ms), so those take the explicit product; longer ones SDPA.
CPU_SDPA_MIN_KEYS = 32


def cpu_attention_impl(q: torch.Tensor, k: torch.Tensor) -> str:
    """The faster kernel on CPU for these inputs (see the measurements above)."""
    if q.dtype != torch.float32:
        return "math"
    if torch.is_grad_enabled() and q.requires_grad:
        return "sdpa"
    return "math" if k.shape[-2] < CPU_SDPA_MIN_KEYS else "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two dims.

    ``sdpa`` uses ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU), ``math`` the explicit
    product (the benchmark's baseline), ``auto`` SDPA on GPU and the measured faster one on CPU
    (:func:`cpu_attention_impl`).
    """
    if impl == "auto":
        impl = cpu_attention_impl(q, k) if q.device.type == "cpu" else "sdpa"
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    scale = q.shape[-1] ** -0.5
    return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1) @ v


class VarAttention(nn.Module):
    """Attention over groups of tokens (a frame for space, a patch location for time), each group plus the CLS.

    The CLS query attends to every token; each other query attends within its group and to the CLS key/value.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.impl = "auto"

    def forward(self, x: torch.Tensor, num_frames: int, mode: str) -> torch.Tensor:
        B, L, D = x.shape
        H = self.num_heads
        hd = D // H
        qkv = self.qkv(x).view(B, L, 3, H, hd).permute(2, 0, 3, 1, 4)  # 3, B, H, L, hd
        q, k, v = qkv.unbind(0)
        cls_out = attention(q[:, :, :1], k, v, self.impl)  # B, H, 1, hd

        T = num_frames
        N = (L - 1) // T

        def group(t: torch.Tensor) -> torch.Tensor:  # B, H, T*N, hd -> B*G, H, n, hd
            t = t.reshape(B, H, T, N, hd)
            if mode == "space":  # groups = frames, each of N tokens
                return t.permute(0, 2, 1, 3, 4).reshape(B * T, H, N, hd)
            return t.permute(0, 3, 1, 2, 4).reshape(B * N, H, T, hd)  # groups = patch locations, each of T tokens

        G = T if mode == "space" else N
        q_, k_, v_ = group(q[:, :, 1:]), group(k[:, :, 1:]), group(v[:, :, 1:])
        cls_k = k[:, :, :1].repeat_interleave(G, dim=0)
        cls_v = v[:, :, :1].repeat_interleave(G, dim=0)
        out = attention(q_, torch.cat([cls_k, k_], dim=2), torch.cat([cls_v, v_], dim=2), self.impl)
        if mode == "space":
            out = out.reshape(B, T, H, N, hd).permute(0, 2, 1, 3, 4)
        else:
            out = out.reshape(B, N, H, T, hd).permute(0, 2, 3, 1, 4)
        out = torch.cat([cls_out, out.reshape(B, H, T * N, hd)], dim=2)  # B, H, L, hd
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class SpaceTimeBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, act: str, drop_path: float,
                 gated_time_attn: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = VarAttention(dim, num_heads)
        self.timeattn = VarAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = DropPath(drop_path)
        if gated_time_attn:
            self.alpha_timeattn = nn.Parameter(torch.zeros([]))
        self.use_checkpoint = False

    def _attend(self, module: VarAttention, x: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, x, frames, mode, use_reentrant=False)
        return module(x, frames, mode)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        t = self._attend(self.timeattn, self.norm3(x), num_frames, "time")
        if hasattr(self, "alpha_timeattn"):
            t = torch.tanh(self.alpha_timeattn) * t
        # The time output only feeds the space attention; the residual is taken from x (reference behaviour).
        s = self._attend(self.attn, self.norm1(x + t), num_frames, "space")
        x = x + self.drop_path(s)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, dim: int, bias: bool) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of patch size {patch_size}")
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, T, 3, H, W -> B, T*N, D (frame-major)
        B, T = x.shape[:2]
        x = self.proj(x.flatten(0, 1))  # B*T, D, h, w
        return x.flatten(2).transpose(1, 2).reshape(B, -1, x.shape[1])


class SpaceTimeTransformer(nn.Module):
    """Video tower. Input ``[B, 3, T, H, W]`` with ``T <= num_frames``; output the CLS feature ``[B, width]``."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, num_frames: int = 4, mlp_ratio: float = 4.0, ln_pre: bool = True,
                 act: str = "quick_gelu", drop_path_rate: float = 0.0, use_checkpoint: bool = False,
                 gated_time_attn: bool = False) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.embed_dim = embed_dim
        self.img_size = img_size
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim, bias=not ln_pre)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim))
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.ln_pre = nn.LayerNorm(embed_dim) if ln_pre else None
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(embed_dim, num_heads, mlp_ratio, act, rates[i], gated_time_attn) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.reset_parameters()
        self.set_grad_checkpointing(use_checkpoint)

    def reset_parameters(self) -> None:
        """Reference init: trunc-normal tokens, zero temporal embedding, time attention that starts as a no-op."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.temporal_embed)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            # time_init="zeros": qkv = 0 and proj weight = 1, so the time branch outputs exactly 0 at step 0.
            nn.init.zeros_(block.timeattn.qkv.weight)
            nn.init.zeros_(block.timeattn.qkv.bias)
            nn.init.ones_(block.timeattn.proj.weight)
            nn.init.zeros_(block.timeattn.proj.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for block in self.blocks:
            block.use_checkpoint = enable

    def set_attention_impl(self, impl: str) -> None:
        if impl not in ("auto", "sdpa", "math"):
            raise ValueError(f"attention impl must be 'auto', 'sdpa' or 'math', got {impl!r}")
        for m in self.modules():
            if isinstance(m, VarAttention):
                m.impl = impl

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, ``[B, 1 + T*N, D]`` (CLS first); the narrator pools these."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got shape {tuple(x.shape)}")
        T = x.shape[2]
        if T > self.num_frames:
            raise ValueError(f"clip has {T} frames but the model was built for at most {self.num_frames}; "
                             "rebuild with num_frames=T and inflate the checkpoint's temporal embedding")
        x = self.patch_embed(x.permute(0, 2, 1, 3, 4))
        n = self.patch_embed.num_patches
        pos = self.pos_embed[:, 1:].repeat(1, T, 1) + self.temporal_embed[:, :T].repeat_interleave(n, dim=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1) + self.pos_embed[:, :1], x + pos], dim=1)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x, T)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]

    # Freezing helpers used by the narrator recipe (spec 6.2).
    _TEMPORAL = ("temporal_embed", "timeattn", "norm3")

    def freeze_spatial_weights(self) -> None:
        for name, p in self.named_parameters():
            if not any(k in name for k in self._TEMPORAL):
                p.requires_grad_(False)

    def freeze_temporal_weights(self) -> None:
        for name, p in self.named_parameters():
            if any(k in name for k in self._TEMPORAL):
                p.requires_grad_(False)


def build_vision_tower(cfg: VisionConfig, use_checkpoint: bool = False) -> SpaceTimeTransformer:
    return SpaceTimeTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.width, depth=cfg.layers,
        num_heads=cfg.heads, num_frames=cfg.num_frames, mlp_ratio=cfg.mlp_ratio, ln_pre=cfg.ln_pre, act=cfg.act,
        drop_path_rate=cfg.drop_path_rate, use_checkpoint=use_checkpoint,
    )
