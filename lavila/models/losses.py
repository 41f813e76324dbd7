"""Training losses of LaViLa (spec section 7), each called as ``loss(outputs: dict) -> dict``.

The returned dict always has ``"loss"`` (the tensor to back-propagate) plus detached 0-d metric tensors.

Contrastive losses are computed on the *global* batch: with a process group of W ranks every rank gathers all
embeddings (with gradient, `lavila.dist.all_gather_with_grad`) and evaluates the same ``W*B x W*B`` loss.
Rank r's local embeddings then receive ``W * dL/dx_r`` (one copy of the gradient from every rank) and DDP's mean
over ranks brings the encoder gradient back to exactly ``dL/dtheta``; scalars that are not gathered
(``logit_scale``) get ``dL/ds`` on every rank, which DDP's mean leaves unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lavila.dist import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size


def _require(outputs: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise KeyError(f"loss inputs lack {missing}; got keys {sorted(outputs)}")


def _percent_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    pred = logits.argmax(dim=-1)
    return 100 * pred.eq(labels).sum() / logits.shape[0]


class CLIPLoss(nn.Module):
    """Symmetric InfoNCE with labels ``arange``; ``logit_scale`` in `outputs` is already exponentiated.

    `use_vissl=True` (all released LaViLa models) gathers with gradient and builds the global logits once.
    `use_vissl=False` is open_clip's variant: gather without gradient and put the local tensors back in their
    slot (`gather_with_grad=False`), or gather with gradient; `local_loss=True` only scores the local rows
    against the global columns, with labels offset by ``rank * B``.
    """

    def __init__(self, use_vissl: bool = True, local_loss: bool = False, gather_with_grad: bool = False) -> None:
        super().__init__()
        self.use_vissl = use_vissl
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    def _logits(self, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> tuple:
        world_size = get_world_size()
        if world_size == 1:
            # Two separate products, as the reference computes them (bitwise-identical results to it).
            return scale * image @ text.T, scale * text @ image.T, 0
        if self.use_vissl:
            all_image, all_text = all_gather_with_grad(image), all_gather_with_grad(text)
            logits_image = scale * all_image @ all_text.T
            return logits_image, logits_image.T, 0
        rank = get_rank()
        if self.gather_with_grad:
            all_image, all_text = all_gather_with_grad(image), all_gather_with_grad(text)
        else:
            all_image, all_text = all_gather_no_grad(image), all_gather_no_grad(text)
            if not self.local_loss:
                # Only the local slot carries gradient; the reference's open_clip path (1/W-scaled after DDP).
                b = image.shape[0]
                all_image = torch.cat([all_image[: rank * b], image, all_image[(rank + 1) * b :]])
                all_text = torch.cat([all_text[: rank * b], text, all_text[(rank + 1) * b :]])
        if self.local_loss:
            return scale * image @ all_text.T, scale * text @ all_image.T, rank * image.shape[0]
        logits_image = scale * all_image @ all_text.T
        return logits_image, logits_image.T, 0

    def forward(self, outputs: dict) -> dict:
        _require(outputs, "image_embed", "text_embed", "logit_scale")
        logits_image, logits_text, offset = self._logits(
            outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"]
        )
        labels = torch.arange(logits_image.shape[0], device=logits_image.device) + offset
        loss = (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels)) / 2
        with torch.no_grad():
            acc = _percent_correct(logits_image, labels)
        return {"loss": loss, "clip_loss": loss, "clip_acc": acc}


def pair_scales(
    gt: torch.Tensor, scale: torch.Tensor, scale_pseudo: torch.Tensor, faithful: bool = True
) -> torch.Tensor:
    """Per-pair logit scale ``S[i, j]`` from ground-truth indicators ``g`` (1 = human text, 0 = narrator text).

    Intended rule: ``m = g_i + g_j``; ``S = s_pseudo`` if m = 0, ``sqrt(s_pseudo * s)`` if m = 1, ``s`` if m = 2.
    The reference computes ``m`` in the dtype of ``g``; its loader yields **bool**, where ``+`` is a logical OR,
    so m = 2 never occurs and GT/GT pairs get the geometric mean. `faithful=True` reproduces that dtype-dependent
    behaviour (bool -> OR, integers -> 3-way); `faithful=False` always applies the intended 3-way rule.
    """
    if faithful and gt.dtype == torch.bool:
        m = (gt[None, :] | gt[:, None]).long()
    else:
        g = gt.long()
        m = g[None, :] + g[:, None]
    mixed = torch.sqrt(scale_pseudo * scale)
    return torch.where(m == 0, scale_pseudo, torch.where(m == 1, mixed, scale.expand_as(mixed)))


class SSLCLIPLoss(nn.Module):
    """CLIP loss with per-pair temperatures for human (GT) vs narrator (pseudo) captions (spec 7.2).

    Owns ``logit_scale_pseudo`` (log scale, init ``log(1/pseudo_temperature_init)``, unclamped, saved in
    ``ckpt['criterion']``); the ``logit_scale`` in `outputs` is the model's, already exponentiated. ``gt_indicators``
    come from ``outputs["gt_indicators"]`` or the second argument. Only the gather-with-gradient (VISSL) path exists
    for W > 1, as in the reference.
    """

    def __init__(self, pseudo_temperature_init: float = 0.08, freeze: bool = False, faithful: bool = True) -> None:
        super().__init__()
        self.logit_scale_pseudo = nn.Parameter(torch.tensor(math.log(1 / pseudo_temperature_init), dtype=torch.float32))
        self.logit_scale_pseudo.requires_grad_(not freeze)
        self.faithful = faithful

    def forward(self, outputs: dict, gt_indicators: torch.Tensor | None = None) -> dict:
        _require(outputs, "image_embed", "text_embed", "logit_scale")
        if gt_indicators is None:
            _require(outputs, "gt_indicators")
            gt_indicators = outputs["gt_indicators"]
        image, text, scale = outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"]
        if gt_indicators.shape != image.shape[:1]:
            raise ValueError(f"gt_indicators has shape {tuple(gt_indicators.shape)}, expected ({image.shape[0]},)")
        scale_pseudo = self.logit_scale_pseudo.exp()
        gt = gt_indicators.to(image.device)
        if get_world_size() > 1:
            image, text, gt = all_gather_with_grad(image), all_gather_with_grad(text), all_gather_no_grad(gt)
            scales = pair_scales(gt, scale, scale_pseudo, self.faithful)
            logits_image = scales * (image @ text.T)
            logits_text = logits_image.T
        else:
            scales = pair_scales(gt, scale, scale_pseudo, self.faithful)
            logits_image = scales * (image @ text.T)
            logits_text = scales * (text @ image.T)  # the mask is symmetric, so S (not S^T) is right here
        labels = torch.arange(logits_image.shape[0], device=logits_image.device)
        loss = (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels)) / 2
        with torch.no_grad():
            correct = logits_image.argmax(dim=-1).eq(labels)
            is_gt = gt.bool()
            num_gt, num_pseudo = is_gt.sum(), (~is_gt).sum()
            # An empty group gives NaN, as in the reference (0 / 0).
            metrics = {
                "clip_acc": 100 * correct.sum() / correct.numel(),
                "num_gt": num_gt.float(),
                "num_pseudo": num_pseudo.float(),
                "clip_acc_gt": 100 * correct[is_gt].sum() / num_gt,
                "clip_acc_pseudo": 100 * correct[~is_gt].sum() / num_pseudo,
            }
        return {"loss": loss, "clip_loss": loss, **metrics}


class CaptionLoss(nn.Module):
    """Narrator token CE over ``text_tokens_logits [B, V, L]`` vs ``labels [B, L]`` (spec 7.4).

    The mean runs over all ``B*L`` positions, padded ones counting as zero (the reference's reduction, kept so loss
    values and learning-rate recipes transfer). Pad id 0 is also GPT-2's ``!``, so genuine ``!`` targets are ignored.
    """

    def __init__(self, pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id = pad_id

    def forward(self, outputs: dict) -> dict:
        _require(outputs, "text_tokens_logits", "labels")
        logits, labels = outputs["text_tokens_logits"], outputs["labels"]
        if logits.ndim != 3 or labels.shape != (logits.shape[0], logits.shape[2]):
            raise ValueError(
                f"text_tokens_logits must be [B, V, L] and labels [B, L]; got {tuple(logits.shape)} and "
                f"{tuple(labels.shape)}"
            )
        per_token = F.cross_entropy(logits, labels, ignore_index=self.pad_id, reduction="none")
        loss = per_token.mean()
        with torch.no_grad():
            keep = labels.ne(self.pad_id)
            correct = (logits.argmax(dim=1).eq(labels) & keep).sum()
            acc = 100 * correct / (keep.sum() + 1e-8)
            # Per-sample perplexity; a row of only padding gives NaN, as in the reference.
            ppl = torch.exp(per_token.sum(dim=1) / keep.sum(dim=1)).mean()
        return {"loss": loss, "caption_loss": loss, "caption_acc": acc, "ppl": ppl}


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``cos(a_i, b_j)`` with norms clamped below at `eps` (zero vectors give 0, not NaN)."""
    a = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return a @ b.T


class MaxMarginRankingLoss(nn.Module):
    """Bidirectional hinge on the global cosine matrix (EK-100 MIR fine-tuning, spec 7.3).

    With ``S = cos(text_i, video_j)`` over the gathered batch, every off-diagonal pair contributes
    ``relu(m - (S_ii - S_ij))`` and ``relu(m - (S_ii - S_ji))``; the loss is their mean over ``2 n (n-1)`` terms
    (`fix_norm=True`). `fix_norm=False` keeps the diagonal terms too (each equal to ``m``), i.e. a mean over
    ``2 n^2``. A relevancy `weight` is accepted and ignored, as in the reference.
    """

    def __init__(self, margin: float = 0.2, fix_norm: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.fix_norm = fix_norm

    def forward(self, outputs: dict, weight: torch.Tensor | None = None) -> dict:
        _require(outputs, "image_embed", "text_embed")
        image = all_gather_with_grad(outputs["image_embed"])
        text = all_gather_with_grad(outputs["text_embed"])
        sim = cosine_similarity_matrix(text, image)
        diag = sim.diagonal()[:, None]
        hinge = torch.cat([F.relu(self.margin - (diag - sim)), F.relu(self.margin - (diag - sim.T))])
        if self.fix_norm:
            n = sim.shape[0]
            off_diag = ~torch.eye(n, dtype=torch.bool, device=sim.device)
            hinge = hinge[torch.cat([off_diag, off_diag])]
        loss = hinge.mean()
        return {"loss": loss, "max_margin_loss": loss}
