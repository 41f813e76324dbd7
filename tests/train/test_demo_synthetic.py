"""`lavila demo` (short run) and the embedded synthetic set it trains on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lavila.cli import main as lavila_main
from lavila.data.synthetic import (
    ACTIONS,
    COLOURS,
    OBJECTS,
    SyntheticEgoClips,
    all_combos,
    is_heldout,
    render_clip,
    split_combos,
    synthetic_tokenizer,
)


def test_demo_short_run_trains_and_reports_retrieval(tmp_path, capsys):
    out = tmp_path / "demo"
    code = lavila_main(["demo", "--quick", "--steps", "30", "--output-dir", str(out), "--eval-groups", "1",
                        "--no-progress", "--batch-size", "16"])
    assert code == 0
    for name in ("metrics.jsonl", "training_curves.png", "demo_retrieval.png", "demo_results.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    results = json.loads((out / "demo_results.json").read_text())
    assert results["steps"] >= 30
    assert results["loss_last"] < results["loss_first"] - 0.1  # it learns within 30 steps
    for split in ("held-out combinations", "held-out clips (seen combinations)"):
        for when in ("before", "after"):
            row = results[when][split]
            assert 0 <= row["t2v_R@1"] <= row["t2v_R@5"] <= 100 and 1 <= row["v2t_MedR"] <= 24
    assert results["chance"]["t2v_R@1"] == pytest.approx(100 / 24) and results["chance"]["t2v_MedR"] == 12.5
    printed = capsys.readouterr().out
    assert "| held-out combinations | after training |" in printed


def test_heldout_combinations_are_unseen_but_their_attributes_are_not():
    train, heldout = split_combos("train"), split_combos("heldout")
    assert len(all_combos()) == len(COLOURS) * len(OBJECTS) * len(ACTIONS) == 120
    assert len(heldout) == 24 and not set(train) & set(heldout) and split_combos("val") == train
    for attr, values in (("colour", COLOURS), ("obj", OBJECTS), ("action", ACTIONS)):
        assert {getattr(k, attr) for k in train} == set(values)
    assert len({k.caption() for k in heldout}) == 24 and all(is_heldout(k) for k in heldout)


def test_word_tokenizer_puts_eot_at_the_largest_id():
    tok = synthetic_tokenizer(context_length=12)
    ids = tok(["#C C moves the red ball to the left", "#C C lifts the blue knife"])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert (ids.argmax(dim=1) == torch.tensor([10, 7])).all()  # SOT + 9 words -> EOT at 10; SOT + 6 -> 7
    assert ids.max().item() == tok.eot == tok.vocab_size - 1 and ids[0, 11] == 0
    assert tok.decode(ids[1]) == "#c c lifts the blue knife"


def test_rendering_is_deterministic_and_shows_the_motion():
    combo = split_combos("train")[0]
    a = render_clip(combo, np.random.default_rng(3), num_frames=4, size=40, distractor_prob=0.0)
    b = render_clip(combo, np.random.default_rng(3), num_frames=4, size=40, distractor_prob=0.0)
    assert a.shape == (4, 40, 40, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 1.0  # the object moved
    ds = SyntheticEgoClips("heldout", 24, img_size=32)
    item = ds[5]
    assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.float32
    assert item["caption"] == ds.combo(5).caption()
