"""`metrics_*.json` dispatch: sampling sections pass; unknown or uncheckable sections fail without crashing."""

from __future__ import annotations

import json
import math

from lavila.cli import main
from lavila.conformance import metrics
from tests.conftest import reference_file


def test_sampling_sections_of_the_public_fixture_pass(capsys):
    main(["conformance", str(reference_file("metrics_public.json"))])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    ours = [r for r in lines if r["check"].startswith(("get_frame_ids", "chunked_video_loader"))]
    assert len(ours) == 7 + 6 and all(r["ok"] and r["max_abs_err"] == 0 for r in ours)


def test_a_section_without_checker_is_a_failed_check(tmp_path):
    path = tmp_path / "metrics_variant.json"
    path.write_text(json.dumps({"seed": 1, "brand_new_metric": {"x": 1}, "get_frame_ids": []}))
    results = metrics.check_metrics(path)
    assert [r.check for r in results] == ["brand_new_metric (no checker)"]
    assert not results[0].ok and math.isinf(results[0].max_abs_err)


def test_missing_checker_module_and_broken_checker_do_not_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "CHECKER_MODULES", ("lavila.conformance.does_not_exist",))
    path = tmp_path / "metrics_variant.json"
    path.write_text(json.dumps({"ek100_mir": {"similarity": []}}))
    (result,) = metrics.check_metrics(path)
    assert not result.ok and "no checker" in result.check and "does_not_exist" in result.check
    monkeypatch.setattr(metrics, "CHECKER_MODULES", ("lavila.conformance.sampling",))
    path.write_text(json.dumps({"chunked_video_loader": [{"second": 1.0}]}))  # a case missing its fields
    (result,) = metrics.check_metrics(path)
    assert not result.ok and math.isinf(result.max_abs_err)
