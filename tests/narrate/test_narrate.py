"""`lavila narrate`: metadata mode (sharded, resumable, corrupt clips counted) and video mode (JSON + SRT)."""

from __future__ import annotations

import json
import pickle

import pytest

from lavila.narrate import narrate as nar
from lavila.narrate.generate import GenerationConfig

GOOD = [
    ("3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014", 0.0, 1.0),
    ("mixkit-chef-preparing-a-sauce-in-a-blender-43034-medium", 1.0, 3.0),
    ("mixkit-hands-of-a-baker-kneading-a-dough-42467-medium", 0.5, 2.5),
    ("mixkit-pastry-chef-cutting-a-loaf-into-slices-43015-medium", 2.0, 3.0),
]
BAD = [("corrupt_truncated", 3.0, 4.5), ("not_a_video", 0.0, 1.0)]  # truncated stream, text file


@pytest.fixture()
def metadata(tmp_path):
    rows = [(*GOOD[0], "#C C stirs"), (*BAD[0], "x"), (*GOOD[1], "#O a chef"), (*GOOD[2], "#O a baker"),
            (*BAD[1], "y"), (*GOOD[3], "#O cuts")]
    path = tmp_path / "clips_train.pkl"
    path.write_bytes(pickle.dumps(rows))
    return path


def _job(metadata, media_dir, checkpoint, out, **kw) -> nar.NarrateJob:
    settings = dict(video_root=str(media_dir), chunk_len=-1, fps=-1, num_workers=0, batch_size=2, part_size=2,
                    generation=GenerationConfig(num_return_sequences=3, max_len=10), device="cpu",
                    max_failure_rate=0.5)  # 2 of the 6 clips are corrupt on purpose
    settings.update(kw)
    return nar.NarrateJob(metadata=str(metadata), checkpoint=str(checkpoint), output_dir=str(out), **settings)


def _merged(out):
    (pkl,) = out.glob("*.pkl")
    return pickle.loads(pkl.read_bytes())


def test_stop_and_rerun_gives_exactly_one_output_per_clip(metadata, media_dir, tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "out"
    first = nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out, limit=3))
    assert first["merged"] is None and first["narrated"] + first["failed"] == 3
    assert not list(out.glob("*.pkl"))  # nothing merged while clips are missing
    second = nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out))
    assert second["pending_at_start"] == 3 and second["merged_rows"] == 4 and second["failed_total"] == 2
    rows = _merged(out)
    assert [r[:3] for r in rows] == GOOD  # input order, corrupt clips left out
    assert all(len(r[3]) == 3 and len(r[4]) == 3 and all(isinstance(s, float) for s in r[4]) for r in rows)
    failures = json.loads((out / "failures.json").read_text())
    assert [f["index"] for f in failures] == [1, 4]
    from lavila.data.metadata import load_metadata

    (parquet,) = out.glob("*.parquet")
    assert load_metadata(parquet) == rows
    # a third run finds nothing to do
    assert nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out))["pending_at_start"] == 0


def test_interrupted_run_keeps_finished_parts(metadata, media_dir, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    real = nar.narrate_batch
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C / pre-emption in the middle of the job
        return real(*args, **kwargs)

    monkeypatch.setattr(nar, "narrate_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out, part_size=1))
    parts = sorted((out / "parts").glob("part-*.json"))
    kept = {i: r for p in parts for i, r in zip(json.loads(p.read_text())["indices"],
                                                  json.loads(p.read_text())["results"])}
    assert kept and len(kept) < 4
    monkeypatch.setattr(nar, "narrate_batch", real)
    summary = nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out, part_size=1))
    assert summary["merged_rows"] == 4
    rows = _merged(out)
    for rec in kept.values():  # finished work was not redone
        assert list(rows[[r[:3] for r in rows].index(tuple(rec[:3]))]) == [*rec[:3], rec[3], rec[4]]


def test_two_ranks_split_the_rows_and_the_last_one_merges(metadata, media_dir, tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "out"
    r0 = nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out), rank=0, world_size=2)
    assert r0["pending_at_start"] == 3 and r0["merged"] is None  # rows 0, 2, 4
    r1 = nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out), rank=1, world_size=2)
    assert r1["pending_at_start"] == 3 and r1["merged_rows"] == 4


def test_another_checkpoint_in_the_same_output_dir_is_refused(metadata, media_dir, tiny_checkpoint,
                                                              tmp_path) -> None:
    from lavila.narrate.shards import ShardError

    out = tmp_path / "out"
    nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out, limit=1))
    with pytest.raises(ShardError, match="different job"):
        nar.narrate_metadata(_job(metadata, media_dir, tiny_checkpoint, out, limit=1, seed=5))


def test_sliding_windows_cover_the_video() -> None:
    assert [w.start for w in nar.sliding_windows(60, 30.0, 1.0, 0.5, 4)] == [0.0, 0.5, 1.0]
    # 5.5 s, window 2, stride 1.5: 0, 1.5, 3.0 fit; the tail 5.0-5.5 gets a window ending at 5.5
    assert [w.start for w in nar.sliding_windows(55, 10.0, 2.0, 1.5, 4)] == [0.0, 1.5, 3.0, 3.5]
    assert [(w.start, w.end) for w in nar.sliding_windows(3, 30.0, 2.0, 1.0, 4)] == [(0.0, 0.1)]
    # [0, 30) in 4 segments: bounds 0, 7, 14 (7.25*2=14.5 rounds to even), 22, 29 -> midpoints
    assert nar.sliding_windows(60, 30.0, 1.0, 1.0, 4)[0].frame_ids == [3, 10, 18, 25]


def test_srt_uses_the_most_confident_caption_until_the_next_window() -> None:
    windows = [{"start": 0.0, "end": 2.0, "captions": [{"text": "a", "score": 9.0}, {"text": "b", "score": 3.0}]},
               {"start": 1.0, "end": 3.0, "error": "VideoDecodeError"},
               {"start": 2.0, "end": 4.0, "captions": [{"text": " c", "score": 1.0}]}]
    assert nar.to_srt(windows, 1.0) == ("1\n00:00:00,000 --> 00:00:02,000\nb\n\n"
                                        "2\n00:00:02,000 --> 00:00:04,000\nc\n")


def test_video_mode_writes_json_and_srt(media_dir, tiny_checkpoint, tmp_path) -> None:
    from lavila.cli import main

    videos = [media_dir / "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4",
              media_dir / "mixkit-pastry-chef-cutting-a-loaf-into-slices-43015-medium.mp4", media_dir / "empty.mp4"]
    code = main(["narrate", *map(str, videos), "--checkpoint", str(tiny_checkpoint), "--output-dir",
                 str(tmp_path), "--window", "2.0", "--stride", "1.0", "--num-return-sequences", "2",
                 "--max-len", "8", "--device", "cpu"])
    assert code == 1  # empty.mp4 is reported, the others are captioned
    result = json.loads((tmp_path / f"{videos[1].stem}.json").read_text())
    assert [w["start"] for w in result["windows"]] == [0.0, 1.0, 2.0]  # 4 s clip
    assert all(len(w["captions"]) == 2 for w in result["windows"])
    srt = (tmp_path / f"{videos[0].stem}.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\n")
    assert not (tmp_path / "empty.json").exists()
