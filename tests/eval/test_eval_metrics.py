"""Metrics: hand-derived small cases (derivations in comments) and the reference fixture `metrics_public.json`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lavila.eval import metrics as M
from tests.conftest import reference_file


def test_mir_map_counts_fractional_relevancy_in_running_sum():
    sim = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.4]])
    rel = np.array([[0.5, 1.0, 0.0], [1.0, 0.0, 1.0]])
    # row 0: ranked rel [0.5, 1, 0], cumsum [0.5, 1.5, 1.5]; only rank 2 has rel == 1 -> 1.5/2 = 0.75 (binary: 0.5)
    # row 1: order [1, 2, 0] -> ranked rel [0, 1, 1], cumsum [0, 1, 2] -> (1/2 + 2/3) / 2 = 7/12
    assert M.mir_mean_average_precision(sim, rel) == pytest.approx((0.75 + 7 / 12) / 2, abs=1e-12)
    # transposed (t2v): col 0 sim [.9,.2] rel [.5,1] -> 1.5/2 = .75; col 1 [.5,.8] rel [1,0] -> 1/2;
    # col 2 [.1,.4] rel [0,1] -> 1/1 = 1
    out = M.ek100_mir_metrics(sim, rel)
    assert out["mAP_t2v"] == pytest.approx((0.75 + 0.5 + 1.0) / 3, abs=1e-12)
    assert out["mAP_avg"] == pytest.approx(((0.75 + 7 / 12) / 2 + 0.75) / 2, abs=1e-12)


def test_mir_ndcg_truncates_at_number_of_relevant_items():
    sim = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.4]])
    rel = np.array([[0.5, 1.0, 0.0], [1.0, 0.0, 1.0]])
    l3 = math.log2(3)
    # row 0: 2 non-zero rels -> first 2 ranks count. DCG = .5/log2(2) + 1/log2(3); IDCG (order [1, .5]) = 1 + .5/log2(3)
    row0 = (0.5 + 1 / l3) / (1 + 0.5 / l3)
    # row 1: ranks [1, 2, 0] -> rel [0, 1] in the first 2 -> DCG = 1/log2(3); IDCG = 1 + 1/log2(3)
    row1 = (1 / l3) / (1 + 1 / l3)
    assert M.mir_ndcg(sim, rel) == pytest.approx((row0 + row1) / 2, abs=1e-12)


def test_mir_ties_follow_numpy_default_argsort_like_the_reference():
    # All scores tied. mAP ranks with (-sim).argsort() -> [0, 1, 2] so the relevant item 0 is first: AP = 1.
    # nDCG ranks with argsort(sim)[::-1] -> [2, 1, 0]: the single counted rank holds item 2 (rel 0): nDCG = 0.
    sim = np.array([[0.5, 0.5, 0.5]])
    rel = np.array([[1.0, 0.0, 0.0]])
    assert M.mir_mean_average_precision(sim, rel) == 1.0
    assert M.mir_ndcg(sim, rel) == 0.0


def test_mir_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        M.ek100_mir_metrics(np.zeros((2, 3)), np.zeros((3, 2)))


def test_ek100_mir_similarity_maps_to_unit_interval_and_selects_sentence_columns():
    v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # full (v @ v.T + 1) / 2 = [[1, .5, 1], [.5, 1, .5], [1, .5, 1]]; sentence ids "c","a" -> columns 2, 0
    out = M.ek100_mir_similarity(v, v, ["a", "b", "c"], ["c", "a"])
    np.testing.assert_allclose(out, [[1, 1], [0.5, 0.5], [1, 1]])
    with pytest.raises(ValueError, match="not found"):
        M.ek100_mir_similarity(v, v, ["a", "b", "c"], ["zz"])


def test_charades_map_hand_case_with_empty_video_and_empty_class():
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.3, 0.2, 0.1], [0.95, 0.99, 0.9]])
    gt = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
    # video 3 has no label -> all its scores become -inf (else it would rank first in every class).
    # class 0: order v0(neg) v1(pos) v2(pos) v3 -> precisions at positives 1/2, 2/3 -> AP 7/12
    # class 1: order v1(neg) v2(neg) v0(pos) -> AP 1/3 ; class 2: no positive -> NaN
    out = M.charades_map(scores, gt)
    assert out["per_class_AP"][0] == pytest.approx(7 / 12, abs=1e-12)
    assert out["per_class_AP"][1] == pytest.approx(1 / 3, abs=1e-12)
    assert math.isnan(out["per_class_AP"][2])
    assert math.isnan(out["mAP"])  # reference plain mean
    assert out["mAP_nanmean"] == pytest.approx((7 / 12 + 1 / 3) / 2, abs=1e-12)


def test_egtea_mean_class_accuracy_counts_empty_rows_as_zero():
    labels, preds = [0, 0, 1, 1, 2], [0, 1, 1, 1, 3]
    # axes = labels ∪ preds = {0,1,2,3}; rows: 0 -> 1/2, 1 -> 2/2, 2 -> 0/1, 3 (never a target) -> 0
    out = M.mean_class_accuracy(labels, preds)
    assert out["mean_class_acc"] == pytest.approx(100 * 1.5 / 4)
    assert out["overall_acc"] == pytest.approx(100 * 3 / 5)
    # with num_classes=5, class 4 (absent everywhere) adds another zero row -> 1.5 / 5
    assert M.mean_class_accuracy(labels, preds, num_classes=5)["mean_class_acc"] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="outside"):
        M.mean_class_accuracy([0, 7], [0, 1], num_classes=5)


def test_egomcq_sorted_type_ids_named_positionally():
    scores = np.array(
        [
            [0, 1, 0, 0, 0],  # type 7, label 1 -> correct
            [1, 0, 0, 0, 0],  # type 3, label 2 -> wrong
            [0, 0, 5, 5, 0],  # type 7, label 2 -> tie, first argmax = 2 -> correct
            [0, 0, 0, 0, 1],  # type 3, label 4 -> correct
        ],
        dtype=float,
    )
    out = M.egomcq_accuracy(scores, [1, 2, 2, 4], [7, 3, 7, 3])
    # sorted ids [3, 7] -> 3 is "Intra-video" (1/2 correct), 7 is "Inter-video" (2/2)
    assert out == {"Intra-video": 50.0, "Inter-video": 100.0}


def test_topk_accuracy():
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    # row 0 target 2 is 2nd best: miss top1, hit top2; row 1 target 0 is best
    assert M.topk_accuracy(scores, [2, 0], ks=(1, 2)) == {"top1": 50.0, "top2": 100.0}


@pytest.fixture(scope="module")
def metrics_fixture() -> dict:
    return json.loads(reference_file("metrics_public.json").read_text())


def test_fixture_ek100_mir(metrics_fixture):
    sec = metrics_fixture["ek100_mir"]
    out = M.ek100_mir_metrics(np.array(sec["similarity"]), np.array(sec["relevancy"]))
    for key in ("mAP_v2t", "mAP_t2v", "mAP_avg", "nDCG_v2t", "nDCG_t2v", "nDCG_avg"):
        assert abs(out[key] - sec[key]) < 1e-9, key
    # a binary-relevancy mAP (a common mistake) does not match the reference
    binary = M.mir_mean_average_precision(np.array(sec["similarity"]), (np.array(sec["relevancy"]) == 1) * 1.0)
    assert abs(binary - sec["mAP_v2t"]) > 1e-6


def test_fixture_charades(metrics_fixture):
    sec = metrics_fixture["charades_map"]
    out = M.charades_map(np.array(sec["scores"]), np.array(sec["gt"]))
    assert sec["mAP"] is None and math.isnan(out["mAP"])
    assert abs(out["mAP_nanmean"] - sec["mAP_nanmean"]) < 1e-9
    for ours, ref in zip(out["per_class_AP"], sec["per_class_AP"], strict=True):
        assert (ref is None and math.isnan(ours)) or abs(ours - ref) < 1e-9


def test_fixture_egtea_and_egomcq(metrics_fixture):
    sec = metrics_fixture["egtea_mean_acc"]
    out = M.mean_class_accuracy(sec["labels"], sec["preds"], num_classes=sec["num_classes"])
    assert abs(out["mean_class_acc"] - sec["mean_class_acc"]) < 1e-9
    assert abs(out["overall_acc"] - sec["overall_acc"]) < 1e-9
    sec = metrics_fixture["egomcq"]
    out = M.egomcq_accuracy(np.array(sec["scores"]), sec["labels"], sec["types"])
    assert out.keys() == sec["result"].keys()
    for k, v in sec["result"].items():
        assert abs(out[k] - v) < 1e-9


def test_conformance_checkers_pass_on_fixture_and_catch_a_wrong_value(metrics_fixture):
    from lavila.conformance import eval_metrics as E

    for name in ("ek100_mir", "charades_map", "egtea_mean_acc", "egomcq"):
        checks = getattr(E, f"check_{name}")("metrics_public.json", metrics_fixture[name])
        assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    broken = dict(metrics_fixture["ek100_mir"], nDCG_t2v=metrics_fixture["ek100_mir"]["nDCG_t2v"] + 1e-6)
    assert not all(c.ok for c in E.check_ek100_mir("x.json", broken))
    # expected NaN (null) passes only if ours is NaN too; a number where NaN is expected fails
    broken = dict(metrics_fixture["charades_map"], mAP=0.3)
    assert not all(c.ok for c in E.check_charades_map("x.json", broken))
    gt = np.array(metrics_fixture["charades_map"]["gt"])
    gt[0, :] = 1  # every class now has a positive -> our mAP is finite, the fixture says null
    broken = dict(metrics_fixture["charades_map"], gt=gt.tolist())
    assert not all(c.ok for c in E.check_charades_map("x.json", broken))
