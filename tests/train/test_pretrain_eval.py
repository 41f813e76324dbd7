"""Per-epoch zero-shot EK-100 MIR inside dual-encoder pre-training (spec 8.1 "Per-epoch evaluation", 9.1).

The run's logged numbers must be those `lavila eval ek100_mir` reports for the checkpoint it saved, and
`checkpoint_best.pt` must follow the best avg mAP, as the reference's `best_acc1` did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lavila.cli import main as cli_main
from lavila.config import ConfigError
from lavila.models.checkpoint import read_checkpoint
from lavila.train.loop import train
from lavila.train.recipe import load_config
from tests.benchmark_files import write_ek100
from tests.conftest import reference_file
from tests.train.helpers import TINY_MODEL, tiny_config, write_tiny_ego4d

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MIR_KEYS = {"mAP_v2t", "mAP_t2v", "mAP_avg", "nDCG_v2t", "nDCG_t2v", "nDCG_avg"}
REFERENCE_CSV = "datasets/EK100/epic-kitchens-100-annotations/retrieval_annotations/EPIC_100_retrieval_test.csv"


@pytest.fixture
def data(tmp_path, media_dir, monkeypatch) -> dict:
    bpe = reference_file("bpe_simple_vocab_16e6.txt.gz")
    monkeypatch.setenv("LAVILA_BPE_PATH", str(bpe))
    (tmp_path / "ego4d_tree").mkdir()
    (tmp_path / "ek100_tree").mkdir()
    return {"ego4d": write_tiny_ego4d(tmp_path / "ego4d_tree", media_dir), "ek": write_ek100(tmp_path / "ek100_tree"),
            "bpe": bpe}


def pretrain_cfg(out: Path, data: dict, **kw):
    ego4d, ek = data["ego4d"], data["ek"]
    return tiny_config(
        out, dataset="ego4d", root=str(ego4d / "videos"), metadata=str(ego4d / "ego4d_train.pkl"),
        video_chunk_len=-1, video_fps=-1, model_overrides=dict(TINY_MODEL, text_vocab_size=49408,
                                                                 text_context_length=77),
        eval_ek100_mir_metadata=str(ek["mir_csv"]), eval_ek100_mir_root=str(ek["root"]), eval_batch_size=2, **kw)


def lavila_eval(checkpoint: Path, data: dict, out: Path) -> dict:
    rc = cli_main(["eval", "ek100_mir", "--checkpoint", str(checkpoint), "--metadata", str(data["ek"]["mir_csv"]),
                   "--root", str(data["ek"]["root"]), "--bpe-path", str(data["bpe"]), "--no-cache", "--workers", "0",
                   "--batch-size", "2", "--output", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_every_epoch_is_scored_like_lavila_eval_and_best_follows_avg_map(tmp_path, data):
    out = tmp_path / "out"
    # seeded: with these settings avg mAP drops after epoch 2 and rises after epoch 3 (best: 1, kept, then 3)
    result = train(pretrain_cfg(out, data, epochs=3, batch_size=2, lr=1e-2, fix_lr=True))
    assert result.global_step == 6 and result.epochs_done == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    for r in evals:
        assert MIR_KEYS <= set(r) and r["num_failed"] == 0
        assert r["score"] == r["mAP_avg"] == pytest.approx((r["mAP_v2t"] + r["mAP_t2v"]) / 2)
    scores = [r["score"] for r in evals]
    assert len(set(scores)) > 1  # the weights moved enough to change the ranking

    # checkpoint_best.pt = the first epoch with the highest avg mAP (strict improvement, as the reference)
    best_epoch = 1 + scores.index(max(scores))
    best = read_checkpoint(out / "checkpoint_best.pt")
    assert best["epoch"] == best_epoch and best["best_acc1"] == pytest.approx(max(scores))
    assert read_checkpoint(out / "checkpoint.pt")["best_acc1"] == pytest.approx(max(scores))
    numbered = read_checkpoint(out / f"checkpoint_{best_epoch:04d}.pt")["state_dict"]
    assert all(torch.equal(v, numbered[k]) for k, v in best["state_dict"].items())

    # the logged numbers are what `lavila eval ek100_mir` computes on each saved epoch checkpoint
    for epoch, logged in enumerate(evals, start=1):
        rec = lavila_eval(out / f"checkpoint_{epoch:04d}.pt", data, tmp_path / f"eval_{epoch}.json")
        assert rec["protocol"]["clip_length"] == 4 and rec["num_items"] == 5
        for k in MIR_KEYS:
            assert rec["metrics"][k] == pytest.approx(logged[k], abs=1e-6), (epoch, k)


def test_eval_limit_keeps_the_first_clips_and_their_sentences(tmp_path, data):
    from lavila.train.tasks.dual_encoder import DualEncoderTask

    cfg = pretrain_cfg(tmp_path / "out", data, eval_limit=3)
    task = DualEncoderTask(cfg)
    task.epoch = 1
    metrics = task.evaluate(task.build_model(), torch.device("cpu"))
    assert MIR_KEYS <= set(metrics) and metrics["score"] == metrics["mAP_avg"]
    assert len(task._ek100_mir.rows) == 3 and len(task._ek100_mir.sentences) == 3


def test_missing_files_fail_at_config_time_naming_the_key(tmp_path, data):
    ek = data["ek"]
    with pytest.raises(ConfigError, match=r"key 'eval_ek100_mir_metadata' \(--eval-ek100-mir-metadata\): .*not found"):
        load_config(CONFIGS / "pretrain_baseline_tsf_b.yaml", ["--eval-ek100-mir-metadata", REFERENCE_CSV])
    with pytest.raises(ConfigError, match="key 'eval_ek100_mir_root'"):
        load_config(CONFIGS / "pretrain_baseline_tsf_b.yaml", ["--eval-ek100-mir-metadata", str(ek["mir_csv"]),
                                                               "--eval-ek100-mir-root", str(tmp_path / "nowhere")])
    (ek["mir_csv"].parent / "relevancy" / "caption_relevancy_EPIC_100_retrieval_test.pkl").unlink()
    with pytest.raises(ConfigError, match=r"key 'eval_ek100_mir_metadata'.*caption_relevancy.*not found; or set "
                                          r"eval_ek100_mir_relevancy"):
        load_config(CONFIGS / "pretrain_baseline_tsf_b.yaml", ["--eval-ek100-mir-metadata", str(ek["mir_csv"]),
                                                               "--eval-ek100-mir-root", str(ek["root"])])
    with pytest.raises(ConfigError, match="key 'eval_ek100_mir_sentences'"):
        load_config(None, ["--eval-ek100-mir-metadata", str(ek["mir_csv"]), "--eval-ek100-mir-root",
                           str(ek["root"]), "--eval-ek100-mir-sentences", str(tmp_path / "none.csv")])
    with pytest.raises(ConfigError, match="synthetic"):
        tiny_config(tmp_path, eval_ek100_mir_metadata=str(ek["mir_csv"]), eval_ek100_mir_root=str(ek["root"]))


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("pretrain_*.yaml")))
def test_recipes_are_off_by_default_and_one_flag_turns_the_reference_check_on(name, data):
    cfg = load_config(CONFIGS / name)
    assert cfg.eval_ek100_mir_metadata == ""  # pre-training must not need EK-100 on disk
    assert cfg.eval_ek100_mir_root == "datasets/EK100/video_ht256px/"  # the reference's folder
    assert REFERENCE_CSV in (CONFIGS / name).read_text()  # the line to enable it, shown in the recipe
    ek = data["ek"]
    on = load_config(CONFIGS / name, ["--eval-ek100-mir-metadata", str(ek["mir_csv"]),
                                      "--eval-ek100-mir-root", str(ek["root"])])
    assert on.eval_ek100_mir_metadata == str(ek["mir_csv"]) and on.eval_batch_size == 16
