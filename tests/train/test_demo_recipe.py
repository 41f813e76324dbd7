"""The whole demo recipe end to end at a tiny size: every stage's outputs, their reference formats, resumability."""

from __future__ import annotations

import json
import pickle

import pytest

pytest.importorskip("pycocoevalcap")


def test_tiny_recipe_runs_every_stage_and_resumes(tmp_path, monkeypatch) -> None:
    from lavila.demo_recipe import run_recipe, tiny_sizes

    out = tmp_path / "demo"
    doc = run_recipe(out, tiny_sizes(), progress=False, log=lambda _: None)
    stages = ["world", "baseline", "lm", "narrator", "narrate", "validate", "rephraser", "lavila", "evaluate"]
    for name in stages:
        assert (out / f"stage_{name}.done").is_file(), name
    world = out / "world"
    for f in ("ego4d_train.pkl", "ego4d_val.pkl", "windows_train.pkl", "heldout_test.pkl", "paraphrase_pairs.json"):
        assert (world / f).is_file(), f
    assert list((world / "videos").glob("*.mp4"))
    human = pickle.loads((world / "ego4d_train.pkl").read_bytes())
    windows = pickle.loads((world / "windows_train.pkl").read_bytes())
    assert 0 < len(human) < len(windows)  # sparse human narrations, every moment narrated by the narrator

    narr = pickle.loads((out / "narrate" / "ego4d_train.narrator.return_10.pkl").read_bytes())
    assert len(narr) == len(windows)  # uncovered moments included
    for uid, t0, t1, texts, scores in narr:  # the reference's quintuples
        assert isinstance(uid, str) and t1 > t0 and isinstance(texts, list) and len(texts) == len(scores) == 10
    reph = pickle.loads((world / "ego4d_train.rephraser.no_punkt_top3.pkl").read_bytes())
    assert len(reph) == len(human)
    for row in reph:  # 4-tuples with lists
        assert len(row) == 4 and isinstance(row[3], list) and row[3] and all(isinstance(t, str) for t in row[3])

    nar = doc["stages"]["narrator"]
    assert nar["loss_last"] < nar["loss_first"]  # the narrator learned (frozen LM + frozen visual tower)
    assert doc["stages"]["lm"]["loss_last"] < doc["stages"]["lm"]["loss_first"]
    ev = doc["stages"]["evaluate"]
    for variant in ("baseline (human)", "LaViLa (rephrased + narrator)"):
        for split, metrics in ev["retrieval"][variant].items():
            assert {"v2t_R@1", "v2t_R@5", "v2t_MedR", "t2v_mAP"} <= set(metrics), split
    assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(ev["narrator"]["metrics"])
    assert len(ev["narrator"]["samples"]) >= 1
    for png in ev["plots"]:
        assert (out / png).is_file() or __import__("pathlib").Path(png).is_file()
    for name in ("baseline", "lavila", "narrator"):  # every verb can load the demo's models with their tokenizers
        assert (out / "models" / name / "config.json").is_file()
    assert (out / "models" / "baseline" / "word_vocab.json").is_file()
    assert json.loads((out / "recipe_results.json").read_text())["table"].startswith("| split")

    # resumable: a rerun skips every finished stage
    logged: list[str] = []
    run_recipe(out, tiny_sizes(), progress=False, log=logged.append)
    assert all("done earlier" in line for line in logged if line.startswith("["))
    assert sum(line.startswith("[") for line in logged) == len(stages)
    assert not any("decode failures @" in line for line in logged)

    # without pycocoevalcap the evaluation still ends, with one note said before any stage runs
    import importlib.util

    (out / "stage_evaluate.done").unlink()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pycocoevalcap" else real(name, *a))
    logged.clear()
    doc = run_recipe(out, tiny_sizes(), progress=False, log=logged.append)
    assert logged[0].startswith("note: narrator caption metrics") and "pip install 'lavila[nlg]'" in logged[0]
    assert doc["stages"]["evaluate"]["narrator"]["metrics"] == {}
    assert "caption metrics left out" in logged[-1]


def test_retrieval_scores_are_perfect_for_the_identity_and_near_chance_for_noise() -> None:
    import numpy as np

    from lavila.demo_recipe import chance_scores, retrieval_scores

    clip_caption = np.array([0, 1, 2, 0, 1, 2])
    perfect = retrieval_scores(np.eye(3)[:, clip_caption], clip_caption)
    assert perfect["v2t_R@1"] == 100 and perfect["v2t_MedR"] == 1 and perfect["t2v_mAP"] == 100
    chance = chance_scores(clip_caption, 3)
    assert 20 < chance["v2t_R@1"] < 50 and chance["v2t_R@5"] == 100
