"""The index folder (``lavila.eval.library``): incremental growth, narrations, exact fast ranking, old formats."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import lavila.eval.search as search_mod
from lavila.cli import main as cli_main
from lavila.data.prepare import write_synthetic_video
from lavila.eval import library
from lavila.eval.search import IndexJob, build_index, load_index, search, top_k


def _video(path, frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_synthetic_video(path, frames, fps=10, height=48, width=64, gop=10)


def _job(videos, checkpoint, out, **kw) -> IndexJob:
    return IndexJob(video_dir=str(videos), checkpoint=str(checkpoint), out=str(out), workers=0, batch_size=4,
                    device="cpu", **kw)


@pytest.fixture
def counted(monkeypatch):
    """Records how many windows each run actually embeds."""
    calls: list[list[str]] = []
    real = search_mod.embed_dataset

    def wrapper(encode, dataset, **kw):
        calls.append([s.path for s in dataset.segments])
        return real(encode, dataset, **kw)

    monkeypatch.setattr(search_mod, "embed_dataset", wrapper)
    return calls


def _rows(index, video):
    ids = [i for i, w in enumerate(index["windows"]) if w["video"] == video]
    return index["embeddings"][ids]


def test_rerun_embeds_only_new_and_changed_videos_and_drops_removed_ones(tmp_path, tiny_checkpoint, counted, capsys):
    videos = tmp_path / "videos"
    _video(videos / "a.mp4", 40)  # 4 s: 2 windows
    _video(videos / "sub" / "b.mp4", 15)  # 1 window
    out = tmp_path / "lib.index"
    first = build_index(_job(videos, tiny_checkpoint, out))
    assert first["generation"] == 1 and len(first["windows"]) == 3 and counted[-1] == ["a.mp4"] * 2 + ["sub/b.mp4"]

    _video(videos / "c.mp4", 20)
    second = build_index(_job(videos, tiny_checkpoint, out))
    assert counted[-1] == ["c.mp4"] and second["reused_videos"] == 2 and second["generation"] == 2
    assert [w["video"] for w in second["windows"]] == ["a.mp4", "a.mp4", "c.mp4", "sub/b.mp4"]
    assert torch.equal(_rows(second, "a.mp4"), _rows(first, "a.mp4"))  # kept, bit for bit
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *library.generation_files(2).values()])

    full = build_index(_job(videos, tiny_checkpoint, tmp_path / "full.index"))  # from scratch: the same index
    inc, scratch = load_index(out), load_index(tmp_path / "full.index")
    # the same rows; embeddings equal up to float rounding (another batch composition, for a.mp4 and b.mp4)
    assert torch.allclose(inc.pop("embeddings"), scratch.pop("embeddings"), atol=1e-6)
    assert {k: v for k, v in inc.items() if k not in library.VOLATILE} == {
        k: v for k, v in scratch.items() if k not in library.VOLATILE}
    assert full["reused_videos"] == 0

    (videos / "sub" / "b.mp4").unlink()
    _video(videos / "a.mp4", 30)  # changed: 3 s
    os.utime(videos / "a.mp4", ns=(1, 1))  # a different mtime even on a coarse clock
    third = build_index(_job(videos, tiny_checkpoint, out))
    assert counted[-1] == ["a.mp4", "a.mp4"] and third["reused_videos"] == 1
    assert third["videos_indexed"] == ["a.mp4", "c.mp4"] and [v["video"] for v in third["videos"]] == ["a.mp4",
                                                                                                       "c.mp4"]
    assert third["windows"][:2] == [{"video": "a.mp4", "start": 0.0, "end": 2.0},
                                    {"video": "a.mp4", "start": 1.0, "end": 3.0}]

    capsys.readouterr()
    n_calls = len(counted)
    again = build_index(_job(videos, tiny_checkpoint, out))  # nothing changed: nothing embedded or rewritten
    assert len(counted) == n_calls and again["generation"] == 3 and "up to date" in capsys.readouterr().err

    other = build_index(_job(videos, tiny_checkpoint, out, window=1.0))  # another protocol: everything again
    assert sorted(counted[-1]) == ["a.mp4"] * 3 + ["c.mp4"] * 2 and other["reused_videos"] == 0


def _narrate_json(path, video, starts, stride=1.0):
    """What `lavila narrate VIDEO` writes for one video (lavila/narrate/narrate.py, video mode)."""
    doc = {"video": str(video), "fps": 10.0, "num_frames": 40, "duration": 4.0, "window": 2.0, "stride": stride,
           "windows": [{"start": s, "end": s + 2.0, "frame_ids": [0, 1, 2, 3],
                        "captions": [{"text": f"#C C stirs the pot {s}", "score": 2.0},
                                     {"text": f"#C C kneads dough {s}", "score": 1.5}]} for s in starts]}
    doc["windows"].append({"start": 9.0, "end": 11.0, "frame_ids": [0], "error": "VideoDecodeError: x"})
    path.write_text(json.dumps(doc))


def test_narrations_are_attached_kept_and_shown_by_search(tmp_path, tiny_checkpoint, bpe_path, capsys):
    videos = tmp_path / "videos"
    _video(videos / "a.mp4", 40)
    _video(videos / "b.mp4", 20)
    captions = tmp_path / "captions"
    captions.mkdir()
    _narrate_json(captions / "a.json", videos / "a.mp4", [0.0, 1.0, 2.0])
    export = tmp_path / "export.json"  # the one-file export: {video_id: [{start, end, caption, ...}]}
    export.write_text(json.dumps({"b": [{"start": 0.0, "end": 1.0, "caption": "someone slices bread",
                                         "candidates": ["x"], "score": 0.3}],
                                  "missing_video": [{"start": 0.0, "end": 1.0, "caption": "nobody"}]}))
    out = tmp_path / "lib.index"
    rc = cli_main(["index", str(videos), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--workers", "0",
                   "--narrations", str(captions), str(export)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "'missing_video' matches no indexed video" in err
    index = load_index(out)
    a_rows = [r for r in index["narrations"] if r["video"] == "a.mp4"]
    # the most confident candidate (lowest score) of each window; the failed window has none
    assert [(r["start"], r["caption"]) for r in a_rows] == [(0.0, "#C C kneads dough 0.0"),
                                                           (1.0, "#C C kneads dough 1.0"),
                                                           (2.0, "#C C kneads dough 2.0")]
    assert [(r["video"], r["caption"], r["score"]) for r in index["narrations"] if r["video"] == "b.mp4"] == [
        ("b.mp4", "someone slices bread", 0.3)]

    rc = cli_main(["search", "someone kneads dough", "--index", str(out), "--top-k", "3", "--json", "--bpe-path",
                   str(bpe_path)])
    hits = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(hits) == 3
    for h in hits:
        if h["video"] == "a.mp4" and h["start"] == 2.0:  # window 2-4 s overlaps narrations 1-3 and 2-4
            assert h["narration"] == "#C C kneads dough 2.0"
            assert [n["caption"] for n in h["narrations"]] == ["#C C kneads dough 1.0", "#C C kneads dough 2.0"]
        if h["video"] == "b.mp4":
            assert h["narration"] == "someone slices bread"
    rc = cli_main(["search", "dough", "--index", str(out), "--top-k", "3", "--bpe-path", str(bpe_path)])
    text = capsys.readouterr().out
    assert rc == 0 and "| narration" in text.splitlines()[0] and "#C C kneads dough" in text

    # a rerun without --narrations keeps them; a changed video loses its (now stale) narrations
    _video(videos / "b.mp4", 25)
    os.utime(videos / "b.mp4", ns=(1, 1))
    rc = cli_main(["index", str(videos), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--workers", "0"])
    assert rc == 0
    assert {r["video"] for r in load_index(out)["narrations"]} == {"a.mp4"}


def test_top_k_is_exact_and_keeps_ties_in_row_order():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2000, 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[100] = emb[7]  # exact ties: the earlier row first
    emb[1500] = emb[7]
    q = emb[7] * 3.0 + 0.01 * rng.standard_normal(32)
    rows, scores = top_k(torch.from_numpy(emb).float(), q, 10)
    ref = emb.astype(np.float32).astype(np.float64) @ (q / np.linalg.norm(q))
    expect = np.argsort(-ref, kind="stable")[:10]
    assert rows.tolist() == expect.tolist() and rows[:3].tolist() == [7, 100, 1500]
    assert scores == pytest.approx(ref[expect], abs=1e-12)
    assert top_k(torch.zeros(0, 4), np.ones(4), 5)[0].tolist() == []
    assert len(top_k(torch.from_numpy(emb).float(), q, 5000)[0]) == 2000
    with pytest.raises(ValueError, match="zero"):
        top_k(torch.from_numpy(emb).float(), np.zeros(32), 3)


def test_a_single_file_index_of_format_2_is_still_searched(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.index"
    fields = {"format": 2, "windows": [{"video": "a.mp4", "start": 0.0, "end": 2.0},
                                       {"video": "b.mp4", "start": 2.0, "end": 4.0}], "protocol": {"frames": 4}}
    save_file({"embeddings": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, str(path),
              metadata={"lavila.index": json.dumps(fields)})
    index = load_index(path)
    assert [h["video"] for h in search(index, np.array([0.0, 2.0]), 2)] == ["b.mp4", "a.mp4"]


def test_index_refuses_a_file_as_its_folder_and_an_unfinished_folder_is_explained(tmp_path, tiny_checkpoint,
                                                                                   capsys):
    videos = tmp_path / "videos"
    _video(videos / "a.mp4", 15)
    old = tmp_path / "old.index"
    old.write_bytes(b"x")
    rc = cli_main(["index", str(videos), "--checkpoint", str(tiny_checkpoint), "--out", str(old), "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "is a file" in err and "an index is a folder" in err and old.read_bytes() == b"x"
    unfinished = tmp_path / "half.index"
    (unfinished / "work").mkdir(parents=True)
    rc = cli_main(["search", "x", "--index", str(unfinished)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a finished lavila index" in err and len(err.strip().splitlines()) == 1


def test_segment_metadata_is_parquet_and_embeddings_safetensors(tmp_path):
    import pyarrow.parquet as pq
    from safetensors import safe_open

    out = tmp_path / "x.index"
    index = {"embeddings": torch.eye(2), "windows": [{"video": "a.mp4", "start": 0.0, "end": 2.0},
                                                     {"video": "a.mp4", "start": 2.0, "end": 4.0}],
             "videos": [{"video": "a.mp4", "size": 1, "mtime_ns": 2, "status": "indexed", "error": None,
                         "windows": 2, "failed_windows": 0}], "protocol": {"frames": 4}}
    assert library.write_library(out, index) == 1
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert pq.read_table(out / files["segments"]).column_names == ["video", "start", "end"]
    with safe_open(str(out / files["embeddings"]), framework="pt") as f:
        assert list(f.keys()) == ["embeddings"]
    assert library.write_library(out, index) == 2  # the next generation; the old one goes on clean-up
    library.clean_library(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *library.generation_files(2).values()])
    assert load_index(out)["windows"] == index["windows"]


def test_an_index_inside_the_video_folder_does_not_index_itself(tmp_path, tiny_checkpoint):
    videos = tmp_path / "videos"
    _video(videos / "a.mp4", 15)
    out = videos / "lib.index"
    build_index(_job(videos, tiny_checkpoint, out))
    _video(out / "uploads" / "clip.mp4", 15)  # what `lavila app`'s narrate page stores
    again = build_index(_job(videos, tiny_checkpoint, out))
    assert again["videos_indexed"] == ["a.mp4"] and [v["video"] for v in again["videos"]] == ["a.mp4"]
