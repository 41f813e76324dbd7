"""The top-p filter removes exactly the tokens HF's ``TopPLogitsWarper`` removes, on both of its paths."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from lavila.narrate import nucleus
from lavila.narrate.nucleus import NucleusLogitsWarper, nucleus_remove_mask

VOCAB = 50257  # GPT-2's: the narrator's real width, so TOP_K relates to it as in generation


def hf_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    return TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1)(None, logits).isinf()


def rows(scale: float, n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, VOCAB, generator=g) * scale


@pytest.fixture
def no_full_sort(monkeypatch):
    def refuse(*_):
        raise AssertionError("fell back to the full sort")

    monkeypatch.setattr(nucleus, "_hf_remove", refuse)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_peaked_rows_settle_in_the_top_k(top_p, no_full_sort) -> None:
    logits = rows(6.0)  # a trained narrator's regime: a handful of tokens hold the mass
    got = nucleus_remove_mask(logits, top_p)
    assert torch.equal(got, hf_mask(logits, top_p))
    assert (~got).sum(dim=1).max() < 2048  # the kept sets really are small


def test_large_nuclei_fall_back_to_the_full_sort(monkeypatch) -> None:
    calls = []
    real = nucleus._hf_remove
    monkeypatch.setattr(nucleus, "_hf_remove", lambda x, t: calls.append(x.shape[0]) or real(x, t))
    # a random-weight GPT-2's regime (nearly flat: most of the vocabulary is in the nucleus) mixed with peaked rows
    logits = torch.cat([rows(0.02, 4, seed=1), rows(6.0, 4, seed=2), rows(2.5, 4, seed=3)])
    for top_p in (0.9, 0.95):
        calls.clear()
        got = nucleus_remove_mask(logits, top_p)
        assert torch.equal(got, hf_mask(logits, top_p))
        assert calls == [8]  # only the 8 large-nucleus rows took the sort
    calls.clear()
    flat = rows(0.02, 3, seed=4)
    assert torch.equal(nucleus_remove_mask(flat, 0.95), hf_mask(flat, 0.95)) and calls == [3]


def test_small_vocabulary_and_the_most_likely_token() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]]).log()
    for top_p in (0.1, 0.8, 0.96, 0.999):
        assert torch.equal(nucleus_remove_mask(logits, top_p), hf_mask(logits, top_p))
    assert not nucleus_remove_mask(logits, 1e-6)[:, 0].any()  # the top token is never removed


def test_warper_is_a_drop_in() -> None:
    logits = rows(3.0, 6)
    got = NucleusLogitsWarper(0.9)(None, logits)
    want = TopPLogitsWarper(top_p=0.9)(None, logits)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="top_p"):
        NucleusLogitsWarper(0.0)
