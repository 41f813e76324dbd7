"""Training on partly broken video: exact resume whatever the worker count; the decode-failure threshold holds."""

from __future__ import annotations

import json
import shutil

import pytest

from lavila.train.loop import train
from tests.conftest import reference_file
from tests.train.helpers import EGO4D_CLIP, TINY_MODEL, assert_same_weights, tiny_config, tiny_values, weights

# corrupt_truncated.mp4 is 10 fps: its header promises 50 frames, only the first 13 decode
PARTLY_CORRUPT = [("clip", 0.0, 1.0, "#C C stirs the pan"), ("clip", 0.5, 1.5, "#C C stirs food"),
                  ("clip", 1.0, 1.9, "#C C holds the spoon"), ("clip", 0.2, 1.2, "#C C looks at the pan"),
                  ("trunc", 0.0, 1.0, "#C C pours sauce"), ("trunc", 0.2, 1.1, "#C C holds a jar"),
                  ("trunc", 3.0, 4.0, "#C C blends"),  # past the corrupt point: fails ("truncated")
                  ("trunc", 0.3, 1.2, "#C C opens the lid")]
ONE_MISSING = PARTLY_CORRUPT[:4] + [("gone", 0.0, 1.0, "#C C is not here")] + PARTLY_CORRUPT[4:6] + [PARTLY_CORRUPT[7]]


@pytest.fixture
def data(tmp_path, media_dir, monkeypatch):
    from lavila.data.metadata import save_metadata

    monkeypatch.setenv("LAVILA_BPE_PATH", str(reference_file("bpe_simple_vocab_16e6.txt.gz")))
    (tmp_path / "videos").mkdir()
    shutil.copy(media_dir / EGO4D_CLIP, tmp_path / "videos" / "clip.mp4")
    shutil.copy(media_dir / "corrupt_truncated.mp4", tmp_path / "videos" / "trunc.mp4")
    save_metadata(PARTLY_CORRUPT, tmp_path / "ego4d_train.corrupt.pkl")
    save_metadata(ONE_MISSING, tmp_path / "ego4d_train.missing.pkl")
    return tmp_path


def values(data, out, metadata, **kw):
    return tiny_values(data / out, dataset="ego4d", root=str(data / "videos"), metadata=str(data / metadata),
                       video_chunk_len=-1, video_fps=-1, batch_size=4, epochs=2,
                       model_overrides=dict(TINY_MODEL, text_vocab_size=49408, text_context_length=77), **kw)


def decode_records(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "decode_failures"]


def test_resume_with_a_partly_corrupt_video_is_exact_whatever_the_worker_count(data):
    """The file that failed for one sample must not make another process replace its good samples (issue 9.3)."""

    def cfg(out, **kw):
        return tiny_config(**{"output_dir": data / out,
                              **values(data, out, "ego4d_train.corrupt.pkl", max_decode_failures=0.5, **kw)})

    whole = train(cfg("whole"))
    first = train(cfg("parts", stop_after_steps=1))
    assert first.interrupted and first.global_step == 1
    resumed = train(cfg("parts", workers=2))  # new processes load the rest
    assert resumed.global_step == whole.global_step == 4
    assert_same_weights(weights(data / "whole" / "checkpoint.pt"), weights(data / "parts" / "checkpoint.pt"))
    # the failures were real and counted: one truncated sample per epoch
    assert [r.get("truncated") for r in decode_records(data / "whole")] == [1, 1]


@pytest.mark.parametrize("workers", [0, 2])
def test_over_the_threshold_the_run_stops_at_the_epoch_end_with_one_line(data, workers, capsys):
    """12.5% of 8 samples fail (threshold 5%, fewer than min_samples): the epoch end catches it (issue 9.4)."""
    from lavila.cli import main as lavila_main
    from tests.train.helpers import write_yaml

    recipe = write_yaml(data / "recipe.yaml", values(data, "out", "ego4d_train.missing.pkl", workers=workers))
    assert lavila_main(["train", str(recipe)]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("lavila train: error: epoch 1: 12.50% of 8 samples failed to decode (more than "
                           f"max_failure_rate=5.00%): 1 x missing ({data / 'videos' / 'gone.mp4'})"), line
    assert "[decode failures @ epoch 1] 1 of 8 samples failed to decode" in captured.out
    (record,) = decode_records(data / "out")
    assert record["epoch"] == 1 and record["step"] == 2 and (record["attempts"], record["missing"]) == (8, 1)
    assert record["worst_files"] == [{"path": str(data / "videos" / "gone.mp4"), "kind": "missing", "failures": 1}]
    assert (data / "out" / "checkpoint.pt").is_file()  # the epoch is saved before the stop: no work lost


def test_below_the_threshold_every_epoch_is_summarised_and_logged(data, capsys):
    result = train(tiny_config(**values(data, "ok", "ego4d_train.missing.pkl", max_decode_failures=0.2)))
    assert result.epochs_done == 2 and not result.interrupted
    out = capsys.readouterr().out
    for epoch in (1, 2):
        assert f"[decode failures @ epoch {epoch}] 1 of 8 samples failed to decode (12.50%" in out
    records = decode_records(data / "ok")
    assert [(r["epoch"], r["attempts"], r["failures"], r["missing"]) for r in records] == [(1, 8, 1, 1), (2, 8, 1, 1)]
