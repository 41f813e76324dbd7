"""The dual-encoder task on real video through lavila.data (Ego4D layout), with the LaViLa narrator mix."""

from __future__ import annotations

import json

import pytest

from lavila.models.checkpoint import read_checkpoint
from lavila.train.loop import train
from tests.conftest import reference_file
from tests.train.helpers import TINY_MODEL, tiny_config, write_tiny_ego4d


@pytest.fixture
def ego4d_root(tmp_path, media_dir, monkeypatch):
    monkeypatch.setenv("LAVILA_BPE_PATH", str(reference_file("bpe_simple_vocab_16e6.txt.gz")))
    return write_tiny_ego4d(tmp_path, media_dir)


def test_lavila_mix_on_decoded_video(ego4d_root):
    cfg = tiny_config(
        ego4d_root / "out", dataset="ego4d", root=str(ego4d_root / "videos"),
        metadata=str(ego4d_root / "ego4d_train.pkl"),
        metadata_aux=[str(ego4d_root / "ego4d_train.narrator.pkl")], video_chunk_len=-1, video_fps=-1,
        model_overrides=dict(TINY_MODEL, text_vocab_size=49408, text_context_length=77), batch_size=3, epochs=1,
        freeze_temperature=True)
    result = train(cfg)
    assert result.global_step == 2  # 4 human + 2 narrator clips, batch 3
    rows = [json.loads(line) for line in (ego4d_root / "out" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]  # the epoch's decode-failure summary is a line too
    assert sum(r["num_gt"] + r["num_pseudo"] for r in rows) == 6 and sum(r["num_pseudo"] for r in rows) == 2
    ckpt = read_checkpoint(ego4d_root / "out" / "checkpoint.pt")
    assert "logit_scale_pseudo" in ckpt["criterion"]  # SSLCLIPLoss owns the pseudo temperature
    assert ckpt["state_dict"]["module.logit_scale"].item() == pytest.approx(2.6593, abs=1e-4)  # frozen at 1/0.07


def test_resume_on_decoded_video_ends_with_identical_weights(ego4d_root, monkeypatch):
    """Frame jitter, crops and paraphrase choice on real video depend only on (seed, epoch, sample)."""
    import os

    import torch

    def cfg(out, **kw):
        return tiny_config(
            ego4d_root / out, dataset="ego4d", root=str(ego4d_root / "videos"),
            metadata=str(ego4d_root / "ego4d_train.pkl"),
            metadata_aux=[str(ego4d_root / "ego4d_train.narrator.pkl")], video_chunk_len=-1, video_fps=-1,
            model_overrides=dict(TINY_MODEL, text_vocab_size=49408, text_context_length=77), batch_size=2,
            epochs=2, **kw)

    whole = train(cfg("whole"))
    first = train(cfg("parts", stop_after_steps=4))
    assert first.interrupted and first.global_step == 4
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)  # a resumed job is a new process
    resumed = train(cfg("parts"))
    assert resumed.global_step == whole.global_step == 6
    a = read_checkpoint(ego4d_root / "whole" / "checkpoint.pt")["state_dict"]
    b = read_checkpoint(ego4d_root / "parts" / "checkpoint.pt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
