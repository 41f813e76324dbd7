"""`lavila index` / `lavila search` on the shared media folder with a tiny random model: the results are random,
the mechanics (windows, timestamps, bad files, ranking by dot product) are checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lavila.cli import main as cli_main
from lavila.data.sampling import window_bounds
from lavila.eval.search import load_index, search


def test_window_bounds():
    """One planner for index and narrate: full windows, the tail covered by one window aligned to the end."""
    assert window_bounds(5.0, 2.0, 2.0) == [(0.0, 2.0), (2.0, 4.0), (3.0, 5.0)]
    assert window_bounds(0.1, 2.0, 2.0) == [(0.0, 0.1)]  # shorter than a window: one window over all of it
    assert window_bounds(3.0, 2.0, 1.0) == [(0.0, 2.0), (1.0, 3.0)]
    assert window_bounds(4.0, 2.0, 2.0) == [(0.0, 2.0), (2.0, 4.0)]  # no empty window at the very end
    assert window_bounds(5.5, 2.0, 1.5) == [(0.0, 2.0), (1.5, 3.5), (3.0, 5.0), (3.5, 5.5)]
    with pytest.raises(ValueError):
        window_bounds(3.0, 0.0, 1.0)


def test_index_and_search_media_folder(tmp_path, media_dir, tiny_checkpoint, bpe_path, capsys):
    out = tmp_path / "media.index"
    rc = cli_main(["index", str(media_dir), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                   "--workers", "0", "--batch-size", "4", "--precision", "fp32"])  # compared with fp32 below
    assert rc == 0
    index = load_index(out)
    assert not (tmp_path / "media.index.work").exists()
    skipped = {s["video"]: s["error"] for s in index["skipped_videos"]}
    assert set(skipped) == {"empty.mp4", "not_a_video.mp4"} and skipped["empty.mp4"].startswith("empty")
    # the truncated file opens (header: 50 frames, 5 s at 10 fps) but no window decodes: 3 windows reported
    failed = [w for w in index["failed_windows"] if w["video"] == "corrupt_truncated.mp4"]
    # the tail window is aligned to the end (one planner for index and narrate)
    assert [(w["start"], w["end"]) for w in failed] == [(0.0, 2.0), (2.0, 4.0), (3.0, 5.0)]
    assert "corrupt_truncated.mp4" not in index["videos_indexed"]
    windows = {}
    for w in index["windows"]:
        windows.setdefault(w["video"], []).append((w["start"], w["end"]))
    # 60 frames at 30 fps = 2.0 s: one window; 40 frames at 10 fps: 2 windows; 390 frames at 29.97 fps = 13.013 s
    assert windows["3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"] == [(0.0, 2.0)]
    assert windows["mixkit-pastry-chef-cutting-a-loaf-into-slices-43015-medium.mp4"] == [(0.0, 2.0), (2.0, 4.0)]
    nasa = windows["nasa_13013.mp4"]
    duration = 390 / (30000 / 1001)  # full windows 0..12 s, then the tail covered by one window ending at the end
    assert len(nasa) == 7 and nasa[-1] == (pytest.approx(duration - 2.0, abs=1e-5), pytest.approx(duration, abs=1e-5))
    assert windows["video_90.mov"] == [(0.0, 0.1)]
    emb = index["embeddings"]
    assert emb.shape == (len(index["windows"]), 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)

    capsys.readouterr()
    rc = cli_main(["search", "someone kneads dough", "--index", str(out), "--top-k", "4", "--json",
                   "--bpe-path", str(bpe_path)])
    assert rc == 0
    hits = json.loads(capsys.readouterr().out)
    # independent ranking: the query's normalised text embedding against every stored window embedding
    from lavila.eval.zeroshot import load_eval_model
    from lavila.models.tokenizers import get_tokenizer

    model = load_eval_model(tiny_checkpoint, 4).model
    with torch.no_grad():
        q = F.normalize(model.encode_text(get_tokenizer("CLIP_OPENAI_TIMESFORMER_BASE", bpe_path)(
            ["someone kneads dough"])), dim=-1)[0]
    scores = (emb.double() @ q.double()).numpy()
    best = np.argsort(-scores, kind="stable")[:4]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert [(h["video"], h["start"], h["end"]) for h in hits] == [
        (index["windows"][i]["video"], index["windows"][i]["start"], index["windows"][i]["end"]) for i in best]
    assert [h["score"] for h in hits] == pytest.approx(scores[best].tolist(), abs=1e-5)
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))

    rc = cli_main(["search", "someone kneads dough", "--index", str(out), "--top-k", "2", "--bpe-path",
                   str(bpe_path)])
    text = capsys.readouterr().out
    assert rc == 0 and "00:00:" in text and len(text.strip().splitlines()) == 3  # header + 2 hits


def test_search_ties_keep_index_order():
    index = {"embeddings": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
             "windows": [{"video": "a", "start": 0.0, "end": 2.0}, {"video": "b", "start": 0.0, "end": 2.0},
                         {"video": "c", "start": 2.0, "end": 4.0}]}
    hits = search(index, np.array([3.0, 0.0]), top_k=3)  # query norm does not matter
    assert [h["video"] for h in hits] == ["a", "c", "b"] and hits[0]["score"] == pytest.approx(1.0)


def test_index_of_a_missing_folder_is_a_clear_error(tmp_path, tiny_checkpoint, capsys):
    rc = cli_main(["index", str(tmp_path / "nope"), "--checkpoint", str(tiny_checkpoint), "--out",
                   str(tmp_path / "x.index")])
    assert rc == 2 and "not a folder" in capsys.readouterr().err
