"""`lavila conformance` as a user runs it: every public fixture, JSON lines, exit status."""

from __future__ import annotations

import json
import subprocess
import sys

from lavila.cli import main


def test_every_public_fixture_passes(reference_dir):
    fixtures = sorted(p for p in reference_dir.iterdir() if p.suffix in (".pt", ".json")
                      and not p.name.startswith(("reference_state_dict_manifest", "video_transforms_public.json")))
    proc = subprocess.run([sys.executable, "-m", "lavila.cli", "conformance", *map(str, fixtures)],
                          capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr
    assert {line["fixture"] for line in lines} == {p.name for p in fixtures}
    failed = [line for line in lines if not line["ok"]]
    assert not failed, failed
    assert proc.returncode == 0, proc.stderr
    for line in lines:
        assert set(line) == {"fixture", "check", "max_abs_err", "tol", "ok"}
        assert line["max_abs_err"] <= line["tol"]


def test_failures_are_reported_in_the_exit_status(tmp_path, capsys):
    assert main(["conformance", str(tmp_path / "clip_tiny_missing.pt")]) == 2
    assert "no such fixture" in capsys.readouterr().err
    odd = tmp_path / "something_else.txt"
    odd.write_text("x")
    assert main(["conformance", str(odd)]) == 2
    assert "not a fixture kind" in capsys.readouterr().err
