"""Benchmark metrics, in numpy, with the reference's exact semantics.

Every function here mirrors one metric of the original evaluation code (spec §9) *including* its quirks, because the
published numbers were produced with those quirks: EK-100 MIR mAP sums fractional relevancies in its running count,
Charades-Ego mAP is NaN whenever a class has no positive, EGTEA mean-class accuracy scores empty confusion rows as 0,
and EgoMCQ names question groups by the *sorted* type ids. Where a quirk makes a number useless in practice (the NaN
mAP) a clearly named sane variant is returned next to it instead of replacing it.

Tie behaviour matters for ranking metrics with quantised scores: we call numpy's default ``argsort`` exactly the way
the reference does (``(-sim).argsort()`` for mAP, ``argsort(sim)[:, ::-1]`` for nDCG), so ties resolve identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INTRA_INTER_NAMES: tuple[str, str] = ("Intra-video", "Inter-video")


# ----------------------------------------------------------------------------------------------------------------
# EK-100 multi-instance retrieval (official epic-kitchens-100 evaluation code semantics)
# ----------------------------------------------------------------------------------------------------------------


def _as_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {a.shape}")
    return a


def _check_same_shape(similarity: np.ndarray, relevancy: np.ndarray) -> None:
    if similarity.shape != relevancy.shape:
        raise ValueError(f"similarity {similarity.shape} and relevancy {relevancy.shape} must have the same shape")


def mir_mean_average_precision(similarity: np.ndarray, relevancy: np.ndarray) -> float:
    """mAP of one retrieval direction (rows are queries).

    The running count ``c_k`` is the cumulative *sum of relevancy values* (0.25, 0.5, ... included) but only ranks
    whose item has relevancy exactly 1 contribute ``c_k / k``, and the AP is divided by the number of relevancy-1
    items. This is the official EK-100 definition; a binary-relevance mAP gives different (lower) numbers.
    """
    sim = _as_2d("similarity", similarity)
    rel = _as_2d("relevancy", relevancy)
    _check_same_shape(sim, rel)
    ranked_order = (-sim).argsort()
    rows = np.arange(sim.shape[0])[:, None]
    ranked_rel = rel[rows, ranked_order]
    cumulative = np.cumsum(ranked_rel, axis=1)
    divisor = np.arange(ranked_rel.shape[1]) + 1
    exact_one = ranked_rel == 1
    num_relevant = np.sum(exact_one, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        average_precision = np.sum(cumulative / divisor * exact_one, axis=1) / num_relevant
    return float(np.mean(average_precision))


def _dcg(similarity: np.ndarray, relevancy: np.ndarray, k_counts: np.ndarray) -> np.ndarray:
    n_rows, n_cols = similarity.shape
    ranks = np.argsort(similarity)[:, ::-1]
    divisors = np.log2(np.arange(n_cols) + 2)[None, :]
    rows = np.arange(n_rows)[:, None]
    return np.sum(relevancy[rows, ranks] * k_counts / divisors, axis=1)


def mir_ndcg(similarity: np.ndarray, relevancy: np.ndarray) -> float:
    """nDCG of one retrieval direction, truncated per query at its number of non-zero relevancies.

    Only the first ``#(relevancy > 0)`` ranks count, so a ranking cannot score well by burying relevant items deep in
    a long list. The ideal DCG ranks by relevancy itself (same numpy argsort, so ties are handled as the reference).
    """
    sim = _as_2d("similarity", similarity)
    rel = _as_2d("relevancy", relevancy)
    _check_same_shape(sim, rel)
    k_counts = (np.sort(rel)[:, ::-1] > 0).astype(int)
    dcg = _dcg(sim, rel, k_counts)
    idcg = _dcg(rel, rel, k_counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(dcg / idcg))


def ek100_mir_metrics(similarity: np.ndarray, relevancy: np.ndarray) -> dict[str, float]:
    """mAP and nDCG in both directions and their averages, keys named as the reference prints them.

    ``similarity`` is ``[clips, sentences]`` (already mapped to [0, 1] and column-selected, see
    :func:`ek100_mir_similarity`); ``relevancy`` is the replica relevancy matrix of the same shape.
    """
    sim = _as_2d("similarity", similarity)
    rel = _as_2d("relevancy", relevancy)
    _check_same_shape(sim, rel)
    out = {
        "mAP_v2t": mir_mean_average_precision(sim, rel),
        "mAP_t2v": mir_mean_average_precision(sim.T, rel.T),
        "nDCG_v2t": mir_ndcg(sim, rel),
        "nDCG_t2v": mir_ndcg(sim.T, rel.T),
    }
    out["mAP_avg"] = (out["mAP_v2t"] + out["mAP_t2v"]) / 2
    out["nDCG_avg"] = (out["nDCG_v2t"] + out["nDCG_t2v"]) / 2
    return out


def ek100_mir_similarity(
    video_embed: np.ndarray,
    text_embed: np.ndarray,
    clip_narration_ids: Sequence[str],
    sentence_narration_ids: Sequence[str],
) -> np.ndarray:
    """Clip x sentence similarity as the reference builds it for the relevancy matrix.

    Every clip's own narration is embedded, giving a square clip x clip cosine matrix mapped to [0, 1] by
    ``(s + 1) / 2``; the sentence set is the subset of clips named in the ``*_sentence.csv`` file (one
    representative clip per distinct sentence), so its columns are picked by narration id in that file's order.
    """
    video = np.asarray(video_embed, dtype=np.float64)
    text = np.asarray(text_embed, dtype=np.float64)
    if video.shape[0] != len(clip_narration_ids) or text.shape[0] != len(clip_narration_ids):
        raise ValueError(
            f"expected one video and one text embedding per clip ({len(clip_narration_ids)}), "
            f"got {video.shape[0]} and {text.shape[0]}"
        )
    similarity = (video @ text.T + 1) / 2
    position = {nid: i for i, nid in reversed(list(enumerate(clip_narration_ids)))}  # first occurrence, like .index
    missing = [nid for nid in sentence_narration_ids if nid not in position]
    if missing:
        raise ValueError(f"sentence narration ids not found among the clips: {missing[:5]} (+{len(missing) - 1})")
    return similarity[:, [position[nid] for nid in sentence_narration_ids]]


# ----------------------------------------------------------------------------------------------------------------
# Charades-Ego video mAP
# ----------------------------------------------------------------------------------------------------------------


def charades_map(scores: np.ndarray, gt: np.ndarray) -> dict[str, object]:
    """Per-class AP over videos and its means.

    Returns ``mAP`` (the reference's plain ``np.mean``: NaN as soon as one class has no positive video, exactly as
    published code behaves), ``mAP_nanmean`` (the mean over classes that have positives, the usable number on a subset)
    and ``per_class_AP`` (NaN for classes without positives). Videos without any positive label get score ``-inf``
    for every class first, as in the reference, which pushes them to the bottom of every ranking.
    """
    scores = _as_2d("scores", scores).copy()
    gt = _as_2d("gt", gt)
    if scores.shape != gt.shape:
        raise ValueError(f"scores {scores.shape} and gt {gt.shape} must have the same shape")
    empty = np.sum(gt, axis=1) == 0
    scores[empty, :] = -np.inf
    per_class = []
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c])
        tp = gt[:, c][order] == 1
        n_pos = tp.sum()
        if n_pos < 0.1:
            per_class.append(float("nan"))
            continue
        t_cum = np.cumsum(tp)
        f_cum = np.cumsum(~tp)
        precision = t_cum / (f_cum + t_cum).astype(float)
        per_class.append(float(np.sum(precision[tp]) / float(n_pos)))
    aps = np.array(per_class, dtype=np.float64)
    finite = aps[~np.isnan(aps)]
    return {
        "mAP": float(np.mean(aps)) if aps.size else float("nan"),
        "mAP_nanmean": float(np.mean(finite)) if finite.size else float("nan"),
        "per_class_AP": per_class,
    }


# ----------------------------------------------------------------------------------------------------------------
# Classification: confusion-matrix accuracies (EGTEA) and top-k
# ----------------------------------------------------------------------------------------------------------------


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_classes: int | None = None) -> np.ndarray:
    """Rows = true class, columns = predicted class.

    With ``num_classes=None`` the axes are the sorted labels present in targets ∪ predictions (what the reference's
    sklearn call does); with ``num_classes=K`` they are ``0..K-1`` so classes that never occur still get a row.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(preds, dtype=np.int64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and preds ({p.size}) must have the same length")
    if num_classes is None:
        axis = np.union1d(y, p)
    else:
        bad = np.concatenate([y, p])
        bad = bad[(bad < 0) | (bad >= num_classes)]
        if bad.size:
            raise ValueError(f"label/prediction {int(bad[0])} outside 0..{num_classes - 1}")
        axis = np.arange(num_classes)
    cm = np.zeros((axis.size, axis.size), dtype=np.int64)
    np.add.at(cm, (np.searchsorted(axis, y), np.searchsorted(axis, p)), 1)
    return cm


def accuracies_from_confusion(cm: np.ndarray) -> tuple[float, float]:
    """(mean class accuracy, overall top-1), both in percent; an all-zero row counts as accuracy 0 (reference rule)."""
    cm = np.asarray(cm, dtype=np.float64)
    row_sums = cm.sum(axis=1)
    per_class = np.where(row_sums > 0, np.diag(cm) / np.where(row_sums > 0, row_sums, 1), 0.0)
    return 100 * float(np.mean(per_class)), 100 * float(np.trace(cm) / np.sum(cm))


def mean_class_accuracy(
    labels: Sequence[int], preds: Sequence[int], num_classes: int | None = None
) -> dict[str, float]:
    """EGTEA's ``mean_class_acc`` and ``overall_acc`` (percent) from :func:`confusion_matrix`."""
    mean_acc, overall = accuracies_from_confusion(confusion_matrix(labels, preds, num_classes))
    return {"mean_class_acc": mean_acc, "overall_acc": overall}


def topk_accuracy(scores: np.ndarray, targets: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, keys ``top{k}``; k larger than the class count is clipped to it."""
    s = _as_2d("scores", scores)
    t = np.asarray(targets, dtype=np.int64).ravel()
    if s.shape[0] != t.size:
        raise ValueError(f"scores has {s.shape[0]} rows but there are {t.size} targets")
    order = np.argsort(-s, axis=1, kind="stable")
    out = {}
    for k in ks:
        hit = (order[:, : min(k, s.shape[1])] == t[:, None]).any(axis=1)
        out[f"top{k}"] = 100 * float(np.mean(hit)) if t.size else float("nan")
    return out


# ----------------------------------------------------------------------------------------------------------------
# EgoMCQ
# ----------------------------------------------------------------------------------------------------------------


def egomcq_accuracy(scores: np.ndarray, labels: Sequence[int], types: Sequence[int]) -> dict[str, float]:
    """Accuracy (percent) per question group.

    The reference zips the *sorted distinct* type ids with ``["Intra-video", "Inter-video"]``, so the smaller id is
    called intra-video whatever the data means by it (spec §9.5/§13: verify on the data; intra ≈ 60%, inter ≈ 90%+).
    Prediction = first argmax over the 5 options.
    """
    s = _as_2d("scores", scores)
    y = np.asarray(labels, dtype=np.int64).ravel()
    ty = np.asarray(types).ravel()
    if not (s.shape[0] == y.size == ty.size):
        raise ValueError(f"scores ({s.shape[0]}), labels ({y.size}) and types ({ty.size}) must have equal length")
    correct = np.argmax(s, axis=1) == y
    return {name: 100 * float(np.mean(correct[ty == t])) for t, name in zip(np.unique(ty), INTRA_INTER_NAMES)}
