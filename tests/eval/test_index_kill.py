"""`lavila index` killed at each of its fail points, then rerun: the index equals an uninterrupted run's."""

from __future__ import annotations

import pytest
import torch

from lavila.data.prepare import write_synthetic_video
from lavila.eval.search import load_index
from tests.failpoint_helpers import KILLED, kill_plan, leftover_temps, point_names, read_trace, run_cli

EXPECTED_POINTS = {"atomic.tmp_written", "atomic.before_rename", "atomic.after_rename", "index.written"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    write_synthetic_video(folder / "a.mp4", 40, fps=10, height=48, width=64, gop=10)  # 4 s: two windows
    write_synthetic_video(folder / "b.mp4", 15, fps=10, height=48, width=64, gop=10)  # 1.5 s: one window
    (folder / "broken.mp4").write_bytes(b"not a video")  # skipped, and reported, in every run
    return folder


def _args(videos, checkpoint, out) -> list[str]:
    return ["index", str(videos), "--checkpoint", str(checkpoint), "--out", str(out), "--workers", "0",
            "--batch-size", "2", "--device", "cpu"]


def _content(out) -> dict:
    index = load_index(out)
    index.pop("date")
    index["embeddings"] = index["embeddings"].numpy().tobytes()  # bit-identical embeddings
    return index


@pytest.fixture(scope="module")
def reference(videos, tiny_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    proc = run_cli(_args(videos, tiny_checkpoint, base / "videos.index"), trace=base / "trace")
    assert proc.returncode == 0, proc.stderr
    content = _content(base / "videos.index")
    assert len(content["windows"]) == 3 and [s["video"] for s in content["skipped_videos"]] == ["broken.mp4"]
    return {"content": content, "trace": read_trace(base / "trace")}


def test_every_index_fail_point_is_exercised(reference):
    assert point_names(reference["trace"]) == EXPECTED_POINTS
    files = {detail for _, name, detail in reference["trace"] if name == "atomic.before_rename"}
    assert "videos.index" in files and any(".partial-rank0." in f for f in files) and len(files) == 3


def test_index_killed_at_each_fail_point_then_rerun_equals_an_uninterrupted_run(videos, tiny_checkpoint, reference,
                                                                                   tmp_path):
    for i, term in enumerate(kill_plan(reference["trace"])):
        run = tmp_path / f"run{i}"
        out = run / "videos.index"
        killed = run_cli(_args(videos, tiny_checkpoint, out), failpoints=term)
        assert killed.returncode == KILLED, (term, killed.stderr)
        rerun = run_cli(_args(videos, tiny_checkpoint, out))
        assert rerun.returncode == 0, (term, rerun.stderr)
        assert _content(out) == reference["content"], term
        assert sorted(p.name for p in run.iterdir()) == ["videos.index"], term  # no work folder, no temporaries
        assert not leftover_temps(run)
        torch.testing.assert_close(load_index(out)["embeddings"].norm(dim=1), torch.ones(3))
