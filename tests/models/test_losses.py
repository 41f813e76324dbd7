"""Losses: reference fixtures plus small hand-computed cases (single process; see tests/train for 2 ranks)."""

from __future__ import annotations

import math

import pytest
import torch

from lavila.conformance.losses import check_losses
from lavila.models.losses import (
    CaptionLoss,
    CLIPLoss,
    MaxMarginRankingLoss,
    SSLCLIPLoss,
    cosine_similarity_matrix,
    pair_scales,
)
from tests.conftest import reference_file


@pytest.fixture(scope="module")
def losses_fixture():
    return torch.load(reference_file("losses_public.pt"), weights_only=False)


def _outputs(fx: dict) -> dict:
    return {k: fx[k] for k in ("image_embed", "text_embed", "logit_scale")}


@pytest.mark.parametrize("use_vissl", [False, True])
def test_clip_loss_matches_reference(losses_fixture, use_vissl):
    expected = losses_fixture["results"][f"vissl={use_vissl}"]
    got = CLIPLoss(use_vissl=use_vissl)(_outputs(losses_fixture))
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-4), key


def test_ssl_loss_matches_reference(losses_fixture):
    expected = losses_fixture["results"]["ssl_vissl"]
    got = SSLCLIPLoss()({**_outputs(losses_fixture), "gt_indicators": losses_fixture["gt_indicators"]})
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-4), key
    # the fixture's bool indicators are what makes the OR quirk matter: the 3-way rule gives another value
    intended = SSLCLIPLoss(faithful=False)(_outputs(losses_fixture), losses_fixture["gt_indicators"])
    assert abs(intended["loss"].item() - expected["loss"]) > 1e-3


def test_conformance_checker_passes(losses_fixture):
    checks = check_losses(reference_file("losses_public.pt"))
    assert len(checks) == sum(len(v) for v in losses_fixture["results"].values())
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_clip_loss_by_hand():
    eye = torch.eye(2)
    out = CLIPLoss()({"image_embed": eye, "text_embed": eye, "logit_scale": torch.tensor(1.0)})
    # logits = I: each row's CE is -log(e / (e + 1)) = log(1 + 1/e), in both directions
    assert float(out["loss"]) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert float(out["clip_acc"]) == 100.0
    swapped = CLIPLoss()({"image_embed": eye, "text_embed": eye.flip(0), "logit_scale": torch.tensor(1.0)})
    assert float(swapped["clip_acc"]) == 0.0


def test_pair_scales_rules():
    s, ps = torch.tensor(4.0), torch.tensor(1.0)
    g = torch.tensor([True, False])
    # bool + bool is a logical OR in the reference: the GT/GT pair gets sqrt(4 * 1) = 2, not 4
    assert pair_scales(g, s, ps, faithful=True).tolist() == [[2.0, 2.0], [2.0, 1.0]]
    assert pair_scales(g, s, ps, faithful=False).tolist() == [[4.0, 2.0], [2.0, 1.0]]
    assert pair_scales(g.long(), s, ps, faithful=True).tolist() == [[4.0, 2.0], [2.0, 1.0]]


def test_ssl_equals_clip_when_scales_are_equal():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    outputs = {"image_embed": image, "text_embed": text, "logit_scale": torch.tensor(1 / 0.07)}
    ssl = SSLCLIPLoss(pseudo_temperature_init=0.07)(outputs, torch.tensor([1, 0, 1, 1, 0]).bool())
    clip = CLIPLoss()(outputs)
    assert ssl["loss"].item() == pytest.approx(clip["loss"].item(), abs=1e-5)


def test_ssl_metrics_by_hand():
    eye = torch.eye(3)
    text = torch.stack([eye[0], eye[2], eye[1]])  # row 0 matches, rows 1 and 2 are swapped
    out = SSLCLIPLoss()(
        {"image_embed": eye, "text_embed": text, "logit_scale": torch.tensor(10.0)}, torch.tensor([True, True, False])
    )
    assert float(out["num_gt"]) == 2 and float(out["num_pseudo"]) == 1
    assert float(out["clip_acc"]) == pytest.approx(100 / 3)
    assert float(out["clip_acc_gt"]) == 50.0 and float(out["clip_acc_pseudo"]) == 0.0


def test_ssl_pseudo_scale_is_a_trainable_criterion_parameter():
    crit = SSLCLIPLoss(pseudo_temperature_init=0.08)
    assert crit.logit_scale_pseudo.exp().item() == pytest.approx(12.5)
    assert "logit_scale_pseudo" in crit.state_dict()
    eye = torch.eye(2)
    crit({"image_embed": eye, "text_embed": eye, "logit_scale": torch.tensor(5.0)}, torch.tensor([False, True]))[
        "loss"
    ].backward()
    assert crit.logit_scale_pseudo.grad is not None and crit.logit_scale_pseudo.grad != 0
    assert not SSLCLIPLoss(freeze=True).logit_scale_pseudo.requires_grad


def test_ssl_needs_indicators():
    eye = torch.eye(2)
    with pytest.raises(KeyError, match="gt_indicators"):
        SSLCLIPLoss()({"image_embed": eye, "text_embed": eye, "logit_scale": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="gt_indicators"):
        SSLCLIPLoss()({"image_embed": eye, "text_embed": eye, "logit_scale": torch.tensor(1.0)}, torch.ones(3).bool())


def test_caption_loss_matches_reference():
    fx = torch.load(reference_file("vclm_tiny_public.pt"), weights_only=False)
    got = CaptionLoss(pad_id=0)({"text_tokens_logits": fx["text_tokens_logits"], "labels": fx["labels"]})
    for key, value in fx["caption_loss"].items():
        assert got[key].item() == pytest.approx(float(value), abs=1e-4), key


def test_caption_loss_by_hand():
    # B=1, V=2, L=2; position 0 target 1 (logits favour 1 by log 3), position 1 is padding
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0]]])  # [B, V, L]
    out = CaptionLoss(pad_id=0)({"text_tokens_logits": logits, "labels": torch.tensor([[1, 0]])})
    nll = -math.log(3 / 4)
    assert float(out["loss"]) == pytest.approx(nll / 2, abs=1e-6)  # mean over both positions, pad counts as 0
    assert float(out["ppl"]) == pytest.approx(math.exp(nll), abs=1e-5)  # per-token over the 1 real token
    assert float(out["caption_acc"]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="B, V, L"):
        CaptionLoss()({"text_tokens_logits": logits[0], "labels": torch.tensor([[1, 0]])})


def test_max_margin_by_hand():
    text = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    video = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    # S = cos(text_i, video_j) = [[1, 0], [1, 0]]; off-diagonal hinges:
    # (0,1): relu(.2-(1-0))=0, relu(.2-(1-1))=.2 ; (1,0): relu(.2-(0-1))=1.2, relu(.2-(0-0))=.2
    out = MaxMarginRankingLoss(margin=0.2)({"image_embed": video, "text_embed": text})
    assert float(out["loss"]) == pytest.approx(1.6 / 4, abs=1e-6)
    # without fix_norm the 4 diagonal terms (each = margin) join the mean
    assert float(MaxMarginRankingLoss(fix_norm=False)({"image_embed": video, "text_embed": text})["loss"]) == (
        pytest.approx(2.4 / 8, abs=1e-6)
    )


def test_cosine_similarity_is_safe_for_zero_vectors():
    sim = cosine_similarity_matrix(torch.zeros(2, 3), torch.ones(2, 3))
    assert torch.equal(sim, torch.zeros(2, 2))


def test_missing_keys_are_named():
    with pytest.raises(KeyError, match="logit_scale"):
        CLIPLoss()({"image_embed": torch.eye(2), "text_embed": torch.eye(2)})
