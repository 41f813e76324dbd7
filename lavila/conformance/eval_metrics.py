"""Conformance of the benchmark metrics against the reference's `metrics_*.json` sections.

Each checker recomputes its metric from the section's *own* inputs only (matrix sizes, class counts and seeds differ
between fixture variants) and compares every reported number. A reference value of ``null`` means the reference
produced NaN (e.g. Charades mAP with a class lacking positives): such a check passes iff ours is NaN too.
"""

from __future__ import annotations

import math

import numpy as np

from lavila.conformance import Check
from lavila.eval import metrics

TOL = 1e-9


def _section(section: dict, key: str, fixture_name: str, section_name: str):
    if key not in section:
        raise ValueError(f"{fixture_name}: section {section_name!r} has no field {key!r}")
    return section[key]


def _error(ours: float, expected: float | None) -> float:
    """|ours - expected|, where an expected null/NaN is matched (error 0) only by a NaN of ours."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return 0.0 if math.isnan(ours) else math.inf
    if math.isnan(ours):
        return math.inf
    return abs(ours - float(expected))


def _compare_value(fixture_name: str, check: str, ours: float, expected: float | None) -> Check:
    return Check.compare(fixture_name, check, _error(ours, expected), TOL)


def check_ek100_mir(fixture_name: str, section: dict) -> list[Check]:
    sim = np.asarray(_section(section, "similarity", fixture_name, "ek100_mir"), dtype=np.float64)
    rel = np.asarray(_section(section, "relevancy", fixture_name, "ek100_mir"), dtype=np.float64)
    ours = metrics.ek100_mir_metrics(sim, rel)
    keys = ["mAP_v2t", "mAP_t2v", "mAP_avg", "nDCG_v2t", "nDCG_t2v", "nDCG_avg"]
    return [
        _compare_value(fixture_name, f"ek100_mir.{k}", ours[k], _section(section, k, fixture_name, "ek100_mir"))
        for k in keys
        if k in section
    ]


def check_charades_map(fixture_name: str, section: dict) -> list[Check]:
    scores = np.asarray(_section(section, "scores", fixture_name, "charades_map"), dtype=np.float64)
    gt = np.asarray(_section(section, "gt", fixture_name, "charades_map"), dtype=np.float64)
    ours = metrics.charades_map(scores, gt)
    checks = [
        _compare_value(fixture_name, f"charades_map.{k}", ours[k], section[k])
        for k in ("mAP", "mAP_nanmean")
        if k in section
    ]
    if "per_class_AP" in section:
        expected = section["per_class_AP"]
        if len(expected) != len(ours["per_class_AP"]):
            checks.append(Check.compare(fixture_name, "charades_map.per_class_AP.length", math.inf, 0))
        else:
            worst = max((_error(got, exp) for got, exp in zip(ours["per_class_AP"], expected)), default=0.0)
            checks.append(Check.compare(fixture_name, "charades_map.per_class_AP", worst, TOL))
    return checks


def check_egtea_mean_acc(fixture_name: str, section: dict) -> list[Check]:
    labels = _section(section, "labels", fixture_name, "egtea_mean_acc")
    preds = _section(section, "preds", fixture_name, "egtea_mean_acc")
    ours = metrics.mean_class_accuracy(labels, preds, num_classes=section.get("num_classes"))
    return [
        _compare_value(fixture_name, f"egtea_mean_acc.{k}", ours[k], section[k])
        for k in ("mean_class_acc", "overall_acc")
        if k in section
    ]


def check_egomcq(fixture_name: str, section: dict) -> list[Check]:
    scores = np.asarray(_section(section, "scores", fixture_name, "egomcq"), dtype=np.float64)
    labels = _section(section, "labels", fixture_name, "egomcq")
    types = _section(section, "types", fixture_name, "egomcq")
    expected = _section(section, "result", fixture_name, "egomcq")
    ours = metrics.egomcq_accuracy(scores, labels, types)
    checks = []
    for name, value in expected.items():
        if name not in ours:
            checks.append(Check.compare(fixture_name, f"egomcq.{name}", math.inf, TOL))
        else:
            checks.append(_compare_value(fixture_name, f"egomcq.{name}", ours[name], value))
    if set(ours) - set(expected):
        checks.append(Check.compare(fixture_name, "egomcq.group_names", math.inf, 0))
    return checks
