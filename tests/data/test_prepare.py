"""`lavila prepare-ego4d` on the real media clips with 1-2 s chunks: layout, sizes, rotation, resume, failures."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lavila.cli import main
from lavila.data.decode import open_video
from lavila.data.prepare import PrepareConfig, prepare_all, prepare_video, target_size

EGO = "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"
FAST = PrepareConfig(chunk_len=1, short_side=144, preset="ultrafast")


def test_target_size_rule():
    assert target_size(1920, 1080, 288) == (512, 288)  # landscape taller than 288 -> height 288
    assert target_size(1080, 1920, 288) == (288, 512)  # portrait wider than 288 -> width 288
    assert target_size(384, 288, 288) == (384, 288)  # already small: unchanged
    assert target_size(426, 240, 144) == (256, 144)  # 255.6 -> nearest even 256
    assert target_size(320, 180, 288) == (320, 180)


def test_chunks_layout_frames_and_resize(tmp_path, media_dir):
    rep = prepare_video(media_dir / EGO, tmp_path, FAST)
    assert not rep.failed, rep.reason
    out = tmp_path / EGO
    assert sorted(p.name for p in out.glob("*.mp4")) == ["0.mp4", "1.mp4"]  # 2 s of video, 1 s chunks
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_chunks"] == 2
    for start in (0, 1):
        reader = open_video(out / f"{start}.mp4", backend="pyav")
        assert len(reader) == 30 and reader.fps == 30.0 and manifest["chunks"][str(start)]["frames"] == 30
        assert reader.get_frames([0]).shape == (1, 144, 192, 3)  # 384x288 -> height 144
    # chunk 1 frame 0 is source frame 30: same picture up to resize + re-encode
    src = open_video(media_dir / EGO, backend="pyav", short_side=144).get_frames([30]).float()
    chunk = open_video(out / "1.mp4", backend="pyav").get_frames([0]).float()
    assert (src - chunk).abs().mean() < 6


def test_portrait_rotation_is_applied(tmp_path, media_dir):
    rep = prepare_video(
        media_dir / "video_90.mov", tmp_path, PrepareConfig(chunk_len=1, short_side=160, preset="ultrafast")
    )
    assert not rep.failed, rep.reason
    frames = open_video(tmp_path / "video_90.mp4" / "0.mp4", backend="pyav").get_frames([0, 2])
    assert frames.shape == (2, 284, 160, 3)  # displayed 320x568 portrait: width -> 160, height 568*160/320 = 284
    ref = open_video(media_dir / "video_90.mov", backend="pyav", short_side=160).get_frames([0]).float()
    assert (ref - frames[:1].float()).abs().mean() < 8


def test_non_integer_fps_and_best_stream(tmp_path, media_dir):
    rep = prepare_video(
        media_dir / "nasa_13013.mp4", tmp_path, PrepareConfig(chunk_len=5, short_side=90, preset="ultrafast")
    )
    assert not rep.failed, rep.reason
    readers = [open_video(tmp_path / "nasa_13013.mp4" / f"{s}.mp4", backend="pyav") for s in (0, 5, 10)]
    assert readers[0].fps == pytest.approx(30000 / 1001)
    assert readers[0].get_frames([0]).shape == (1, 90, 160, 3)  # stream #3 (480x270), not #0 (320x180, 25 fps)
    # frames t*30000/1001 < 5 s: 150 in [0,5), 150 in [5,10), 90 in [10, 13.013)
    assert [len(r) for r in readers] == [150, 150, 90]


def test_rerun_skips_and_resumes_only_what_is_missing(tmp_path, media_dir):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(media_dir / "flipping_a_pancake.mkv", src)
    dst = tmp_path / "dst"
    cfg = PrepareConfig(chunk_len=2, short_side=72, preset="ultrafast")
    first = prepare_all(src, dst, cfg, progress=False)[0]
    assert (first.done, first.skipped, first.failed) == (6, 0, False)  # 310 frames at 30 fps: 0,2,..,10
    out = dst / "flipping_a_pancake.mp4"
    before = {p.name: p.read_bytes() for p in out.glob("*.mp4")}

    again = prepare_all(src, dst, cfg, progress=False)[0]
    assert (again.done, again.skipped) == (0, 6)

    # an interrupted run: chunk 6 half written and a stray temporary file, chunk 8 gone, manifest not complete
    (out / "6.mp4").write_bytes(before["6.mp4"][: len(before["6.mp4"]) // 2])
    (out / "8.mp4").unlink()
    (out / "10.mp4.tmp").write_bytes(b"partial")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    resumed = prepare_all(src, dst, cfg, progress=False)[0]
    assert (resumed.done, resumed.skipped) == (2, 4)  # only 6 and 8 re-encoded; 10 is decoded past, not rewritten
    assert not list(out.glob("*.tmp"))
    after = {p.name: p.read_bytes() for p in out.glob("*.mp4")}
    assert set(after) == set(before)
    assert after["0.mp4"] == before["0.mp4"]  # finished chunks were not touched
    assert len(open_video(out / "6.mp4", backend="pyav")) == 60

    # different settings: nothing from the old manifest is trusted
    other = prepare_all(src, dst, PrepareConfig(chunk_len=2, short_side=64, preset="ultrafast"), progress=False)[0]
    assert (other.done, other.skipped) == (6, 0)


def test_bad_videos_are_reported_and_do_not_stop_the_others(tmp_path, media_dir, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("corrupt_truncated.mp4", "empty.mp4", "not_a_video.mp4", EGO):
        shutil.copy(media_dir / name, src)
    dst = tmp_path / "dst"
    code = main(
        [
            "prepare-ego4d",
            str(src),
            str(dst),
            "--chunk-len",
            "1",
            "--short-side",
            "72",
            "--workers",
            "2",
            "--preset",
            "ultrafast",
            "--no-progress",
        ]
    )
    assert code == 1
    report = json.loads((dst / "prepare_report.json").read_text())
    # 2 chunks of the good clip + chunk 0 of the truncated one (its first second decodes; the video is still failed)
    assert report["summary"] == {"videos": 4, "videos_failed": 3, "chunks_done": 3, "chunks_skipped": 0}
    reasons = {v["uid"]: v["reason"] for v in report["videos"] if v["failed"]}
    assert not json.loads((dst / "corrupt_truncated.mp4" / "manifest.json").read_text())["complete"]
    assert "empty" in reasons["empty"] and "corrupt" in reasons["corrupt_truncated"]
    assert set(reasons) == {"corrupt_truncated", "empty", "not_a_video"}
    assert "FAILED" in capsys.readouterr().err
    assert torch.is_tensor(open_video(dst / EGO / "1.mp4", backend="pyav").get_frames([29]))
