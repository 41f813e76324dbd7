"""`lavila index` killed at each of its fail points, then rerun: the index equals an uninterrupted run's.

The index is a folder (``lavila.eval.library``): generation files, then ``manifest.json`` (the commit point)."""

from __future__ import annotations

from collections import Counter

import pytest

from lavila.data.prepare import write_synthetic_video
from lavila.eval.search import load_index
from tests.failpoint_helpers import KILLED, leftover_temps, read_trace, run_cli

ATOMIC = ("atomic.tmp_written", "atomic.before_rename", "atomic.after_rename")
# (point, which file): the partial embeddings flushed during the run, the finished cache entry, the index's data
# files (embeddings, segments, videos, narrations of the new generation), its manifest.
STEPS = [(p, f) for f in ("partial", "entry", "data", "manifest") for p in ATOMIC] + [("index.written", "index")]
FILES = ["embeddings.g1.safetensors", "manifest.json", "narrations.g1.parquet", "segments.g1.parquet",
         "videos.g1.parquet"]


def _kind(detail: str) -> str:
    if ".partial-rank" in detail:
        return "partial"
    if detail == "videos.index":
        return "index"
    if detail == "manifest.json":
        return "manifest"
    return "data" if ".g1." in detail else "entry"


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


def test_every_index_fail_point_is_in_the_kill_plan(reference):
    assert sorted({(name, _kind(detail)) for _, name, detail in reference["trace"]}) == sorted(STEPS)
    assert all(n == 1 for n in Counter(
        (name, detail) for _, name, detail in reference["trace"]).values())  # each step once: first pass = all


@pytest.mark.slow
@pytest.mark.parametrize("point, which", STEPS)
def test_index_killed_at_a_fail_point_then_rerun_equals_an_uninterrupted_run(videos, tiny_checkpoint, reference,
                                                                             tmp_path, point, which):
    detail = next(d for _, name, d in reference["trace"] if name == point and _kind(d) == which)
    out = tmp_path / "run" / "videos.index"
    killed = run_cli(_args(videos, tiny_checkpoint, out), failpoints=f"{point}@{detail}=1")
    assert killed.returncode == KILLED, killed.stderr
    rerun = run_cli(_args(videos, tiny_checkpoint, out))
    assert rerun.returncode == 0, rerun.stderr
    assert _content(out) == reference["content"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["videos.index"]
    assert sorted(p.name for p in out.iterdir()) == FILES  # no work folder, no temporaries, no stale generation
    assert not leftover_temps(out.parent)
