"""Top-p (nucleus) filtering without sorting the vocabulary when the nucleus is small: HF's rule, found by ``topk``.

Why: HF's ``TopPLogitsWarper`` sorts every row of the ``[rows, 50257]`` logits at every decoding step. For the
narrator's usual batch (8 clips x 10 return sequences) on CPU that sort costs ~130 ms per step, a third of a whole
generation (4.9 of 14.6 s under ``torch.profiler``; ``docs/performance.md``), more than the GPT-2 matmuls. Only the
nucleus' boundary matters, and for a trained narrator at temperature 0.7 it lies among the few most likely
tokens: ``torch.topk`` of a small ``k`` finds it without a full sort (~10 ms per step for the same batch,
``benchmarks/bench_narrator.py``'s top-p table). A row whose
nucleus is larger (a flat distribution: an untrained or random-weight model keeps ~40k of 50k tokens at top-p
0.95) falls back to HF's own sort, at the price of the one ``topk``.

Same rule as HF (``transformers`` 4.27-5.x, ``min_tokens_to_keep=1``): with the row sorted ascending and ``c`` its
cumulative softmax, a token is removed iff ``c <= 1 - top_p``, and the most likely token is always kept. The two
can differ only where a token's cumulative mass is within float rounding of ``1 - top_p`` (the sums run in another
order) or where tied logits straddle the boundary (HF's unstable sort picks among ties arbitrarily too).
``tests/narrate/test_nucleus.py`` checks the masks are identical on peaked rows and on rows that fall back.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import LogitsProcessor

TOP_K = 256  # a row settles when its nucleus lies within its TOP_K most likely tokens


def _hf_remove(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """HF's computation (sort the whole row), for rows whose nucleus is larger than ``TOP_K``."""
    sorted_logits, order = torch.sort(logits, descending=False)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= threshold
    remove[..., -1:] = False
    return remove.scatter(1, order, remove)


def nucleus_remove_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``[N, V]`` bool, True where top-p filtering removes the token (HF ``TopPLogitsWarper``'s rule)."""
    if logits.ndim != 2:
        raise ValueError(f"expected logits [rows, vocab], got shape {tuple(logits.shape)}")
    threshold = 1 - top_p  # compared in the logits' dtype, as HF does
    n, vocab = logits.shape
    probs = logits.softmax(dim=-1)
    remove = torch.empty((n, vocab), dtype=torch.bool, device=logits.device)
    pending = torch.arange(n, device=logits.device)

    if TOP_K < vocab:  # everything outside the top k is removed iff the mass outside is <= threshold
        top, idx = probs.topk(TOP_K, dim=-1)  # descending
        outside = (probs.sum(dim=-1, keepdim=True) - top.sum(dim=-1, keepdim=True)).clamp_min_(0)
        # ascending cumulative mass at each top-k token: the mass outside plus the top-k mass at or below it
        drop = outside + top.flip(-1).cumsum(dim=-1).flip(-1) <= threshold
        drop[:, 0] = False  # the most likely token always stays
        settled = outside[:, 0] <= threshold
        rows = pending[settled]
        if rows.numel():
            sub = torch.ones((rows.numel(), vocab), dtype=torch.bool, device=logits.device)
            remove[rows] = sub.scatter_(1, idx[settled], drop[settled])
        pending = pending[~settled]

    if pending.numel() == n:
        return _hf_remove(logits, threshold)
    if pending.numel():
        remove[pending] = _hf_remove(logits[pending], threshold)
    return remove


class NucleusLogitsWarper(LogitsProcessor):
    """Drop-in for HF ``TopPLogitsWarper(top_p, min_tokens_to_keep=1)`` (see the module docstring)."""

    def __init__(self, top_p: float, filter_value: float = -float("inf")) -> None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.top_p = float(top_p)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(nucleus_remove_mask(scores, self.top_p), self.filter_value)
