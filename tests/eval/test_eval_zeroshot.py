"""`lavila eval` end to end on tiny benchmark files in the real formats, with a tiny random dual encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lavila.cli import main as cli_main
from lavila.data import benchmarks
from lavila.data.decode import open_video
from lavila.eval import metrics, zeroshot
from lavila.eval.cache import read_entry
from lavila.models.tokenizers import get_tokenizer
from lavila.models.transforms import OPENAI_MEAN, OPENAI_STD, eval_transform


def run_eval(tmp_path, bpe_path, cache_dir, *argv: str) -> dict:
    out = tmp_path / f"result_{len(list(tmp_path.glob('result_*.json')))}.json"
    rc = cli_main(["eval", *argv, "--bpe-path", str(bpe_path), "--cache-dir", str(cache_dir), "--workers", "0",
                   "--batch-size", "2", "--output", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_ek100_mir_zero_shot_matches_direct_computation(tmp_path, ek100, tiny_checkpoint, bpe_path, cache_dir):
    rec = run_eval(tmp_path, bpe_path, cache_dir, "ek100_mir", "--checkpoint", str(tiny_checkpoint),
                   "--metadata", str(ek100["mir_csv"]), "--root", str(ek100["root"]))
    assert rec["num_items"] == 5 and rec["num_failed"] == 0 and rec["num_sentences"] == 4
    assert rec["protocol"]["clip_length"] == 4 and rec["world_size"] == 1
    m = rec["metrics"]
    assert set(m) == {"mAP_v2t", "mAP_t2v", "mAP_avg", "nDCG_v2t", "nDCG_t2v", "nDCG_avg"}
    assert m["mAP_avg"] == pytest.approx((m["mAP_v2t"] + m["mAP_t2v"]) / 2)
    assert 0 < m["nDCG_avg"] <= 1
    assert rec["embeddings_from_cache"] is False
    # second run: served from the cache, identical numbers
    rec2 = run_eval(tmp_path, bpe_path, cache_dir, "ek100_mir", "--checkpoint", str(tiny_checkpoint),
                    "--metadata", str(ek100["mir_csv"]), "--root", str(ek100["root"]))
    assert rec2["embeddings_from_cache"] is True and rec2["metrics"] == m

    # Independent recomputation: decode the hand-derived frame ids (see test_eval_benchmarks), reference eval
    # transform, model embeddings, (s+1)/2 similarity of clips x sentence clips, official metrics.
    frame_ids = [[4, 9, 15, 20], [23, 30, 37, 44], [4, 11, 18, 26], [14, 21, 28, 35], [0, 0, 0, 0]]
    paths = ["P01/P01_01.MP4", "P01/P01_01.MP4", "P01/P01_02.MP4", "P02/P02_03.MP4", "P02/P02_03.MP4"]
    narrations = ["open blender", "pour sauce", "knead dough", "cut bread", "open blender"]
    model = zeroshot.load_eval_model(tiny_checkpoint, 4).model
    tf = eval_transform(32, OPENAI_MEAN, OPENAI_STD)
    with torch.no_grad():
        clips = torch.stack([tf(open_video(ek100["root"] / p).get_frames(ids)) for p, ids in zip(paths, frame_ids)])
        v = F.normalize(model.encode_image(clips), dim=-1).double()
        t = F.normalize(model.encode_text(get_tokenizer("CLIP_OPENAI_TIMESFORMER_BASE", bpe_path)(narrations)),
                        dim=-1).double()
    sim = ((v @ t.T + 1) / 2)[:, :4].numpy()  # sentence file = the first four clips, in order
    expected = metrics.ek100_mir_metrics(sim, ek100["relevancy"])
    for k, val in expected.items():
        assert m[k] == pytest.approx(val, abs=1e-6), k


def test_cache_hit_does_not_decode(tmp_path, ek100, tiny_checkpoint, bpe_path, cache_dir, monkeypatch):
    args = ["ek100_mir", "--checkpoint", str(tiny_checkpoint), "--metadata", str(ek100["mir_csv"]),
            "--root", str(ek100["root"]), "--limit", "3"]
    first = run_eval(tmp_path, bpe_path, cache_dir, *args)
    assert first["num_items"] == 3 and first["num_sentences"] == 3

    def no_decoding(*a, **k):
        raise AssertionError("a cached evaluation must not decode video")

    monkeypatch.setattr(benchmarks, "read_segment_frames", no_decoding)
    again = run_eval(tmp_path, bpe_path, cache_dir, *args)
    assert again["embeddings_from_cache"] and again["metrics"] == first["metrics"]
    # another protocol (16 frames) is another cache entry: it has to decode, and here decoding is forbidden
    with pytest.raises(AssertionError, match="must not decode"):
        run_eval(tmp_path, bpe_path, cache_dir, *args, "--clip-length", "16")


def test_ek100_cls_zero_shot_class_embedding_is_mean_of_narrations(tmp_path, ek100, tiny_checkpoint, bpe_path,
                                                                    cache_dir):
    rec = run_eval(tmp_path, bpe_path, cache_dir, "ek100_cls", "--checkpoint", str(tiny_checkpoint),
                   "--metadata", str(ek100["val_csv"]), "--root", str(ek100["root"]))
    # independent: actions sorted as strings ["10:20", "10:3", "2:1", "3:10"]; targets [3, 2, 1, 2]
    class_texts = [["wash knife"], ["knead dough"], ["pour sauce", "cut bread"], ["open the blender", "open blender"]]
    model = zeroshot.load_eval_model(tiny_checkpoint, 4).model
    tok = get_tokenizer("CLIP_OPENAI_TIMESFORMER_BASE", bpe_path)
    tf = eval_transform(32, OPENAI_MEAN, OPENAI_STD)
    frame_ids = [[4, 9, 15, 20], [23, 30, 37, 44], [4, 11, 18, 26], [14, 21, 28, 35]]
    paths = ["P01/P01_01.MP4", "P01/P01_01.MP4", "P01/P01_02.MP4", "P02/P02_03.MP4"]
    with torch.no_grad():
        classes = torch.stack([F.normalize(F.normalize(model.encode_text(tok(texts)), dim=-1).mean(0), dim=0)
                               for texts in class_texts])
        clips = torch.stack([tf(open_video(ek100["root"] / p).get_frames(ids)) for p, ids in zip(paths, frame_ids)])
        scores = F.normalize(model.encode_image(clips), dim=-1) @ classes.T
    top1 = 100 * (scores.argmax(1) == torch.tensor([3, 2, 1, 2])).double().mean().item()
    assert rec["metrics"]["action_top1"] == pytest.approx(top1)
    assert rec["metrics"]["action_top5"] == 100.0  # 4 classes


def _cached_embeds(rec: dict) -> np.ndarray:
    return np.asarray(read_entry(rec["cache_file"])[0]["embeds"], dtype=np.float64)


def _texts(tiny_checkpoint, bpe_path, texts, normalize=True) -> np.ndarray:
    model = zeroshot.load_eval_model(tiny_checkpoint, 4).model
    with torch.no_grad():
        e = model.encode_text(get_tokenizer("CLIP_OPENAI_TIMESFORMER_BASE", bpe_path)(texts)).double()
    return (F.normalize(e, dim=-1) if normalize else e).numpy()


def test_charades_zero_shot(tmp_path, charades, tiny_checkpoint, bpe_path, cache_dir):
    rec = run_eval(tmp_path, bpe_path, cache_dir, "charades_ego", "--checkpoint", str(tiny_checkpoint),
                   "--metadata", str(charades["csv"]), "--root", str(charades["root"]),
                   "--classes", str(charades["classes"]))
    assert rec["protocol"]["sampling"] == "sparse" and rec["protocol"]["clip_length"] == 16
    v = _cached_embeds(rec)
    assert v.shape == (3, 1, 16)
    classes = _texts(tiny_checkpoint, bpe_path, ["Holding some clothes", "Putting clothes somewhere",
                                                 "Taking some food"])
    scores = (v[:, 0] / np.linalg.norm(v[:, 0], axis=1, keepdims=True)) @ classes.T  # raw cosine, no softmax
    expected = metrics.charades_map(scores, np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]]))
    assert rec["metrics"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert rec["metrics"]["classes_without_positives"] == 0


def test_egtea_zero_shot_max_over_30_views_and_corrupt_clip_skipped(tmp_path, egtea, tiny_checkpoint, bpe_path,
                                                                     cache_dir):
    rec = run_eval(tmp_path, bpe_path, cache_dir, "egtea", "--checkpoint", str(tiny_checkpoint),
                   "--metadata", str(egtea["split"]), "--root", str(egtea["root"]), "--classes", str(egtea["actions"]))
    assert rec["num_items"] == 4 and rec["num_failed"] == 1
    assert rec["failed"][0]["index"] == 3 and "truncated" in rec["failed"][0]["error"]
    v = _cached_embeds(rec)
    assert v.shape == (4, 30, 16) and np.isnan(v[3]).all() and not np.isnan(v[:3]).any()  # never zeros
    classes = _texts(tiny_checkpoint, bpe_path, ["open fridge", "take bowl", "cut tomato"])
    logits = (v[:3] / np.linalg.norm(v[:3], axis=-1, keepdims=True)) @ classes.T  # [3, 30, 3]
    pred = logits.max(axis=1).argmax(axis=1)  # max over views (softmax does not change the argmax)
    expected = metrics.mean_class_accuracy([2, 0, 1], pred)
    assert rec["metrics"]["mean_class_acc"] == pytest.approx(expected["mean_class_acc"])
    assert rec["metrics"]["top1"] == pytest.approx(expected["overall_acc"])


def test_egomcq_uses_unnormalised_embeddings(tmp_path, egomcq, tiny_checkpoint, bpe_path, cache_dir):
    rec = run_eval(tmp_path, bpe_path, cache_dir, "egomcq", "--checkpoint", str(tiny_checkpoint),
                   "--metadata", str(egomcq["json"]), "--root", str(egomcq["root"]))
    v = _cached_embeds(rec)[:, :, 0]  # [3 questions, 5 options, E]
    q = _texts(tiny_checkpoint, bpe_path, ["C stirs the pan", "C flips a pancake", "C holds a spatula"],
               normalize=False)
    scores = np.einsum("ne,nke->nk", q, v)
    expected = metrics.egomcq_accuracy(scores, [2, 0, 4], [1, 2, 1])
    assert rec["metrics"] == pytest.approx(expected)
    assert set(rec["metrics"]) == {"Intra-video", "Inter-video"}


def test_torchrun_two_ranks_shard_and_gather(tmp_path, ek100, tiny_checkpoint, bpe_path, cache_dir):
    """Two CPU processes (gloo) split the 5 clips 3/2 and gather: same numbers as one process."""
    import os
    import signal
    import subprocess
    import sys

    common = ["ek100_mir", "--checkpoint", str(tiny_checkpoint), "--metadata", str(ek100["mir_csv"]),
              "--root", str(ek100["root"]), "--bpe-path", str(bpe_path), "--workers", "0", "--batch-size", "2"]
    single = run_eval(tmp_path, bpe_path, cache_dir, *common[:7])
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lavila.cli", "eval", *common, "--cache-dir", str(tmp_path / "ddp_cache"), "--output", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["world_size"] == 2 and rec["num_items"] == 5 and rec["num_failed"] == 0
    for k, v in single["metrics"].items():
        assert rec["metrics"][k] == pytest.approx(v, abs=1e-6), k
    cached = read_entry(rec["cache_file"])[0]["embeds"]
    assert cached.shape[0] == 5 and not np.isnan(cached).any()
    assert not list((tmp_path / "ddp_cache").glob("*partial*"))
