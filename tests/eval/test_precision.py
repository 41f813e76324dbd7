"""Inference precision of ``lavila eval``, ``lavila index`` and ``lavila search``: what ``auto`` resolves to (one
rule, :mod:`lavila.dist`), every path (fp32, bf16, auto) runs end to end on a tiny random model with bf16 embeddings
close to fp32 (cosine >= ``COSINE_MIN``), and fp16 off CUDA is refused in one line before anything is loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lavila.cli import main as cli_main
from lavila.config import ConfigError
from lavila.dist import autocast_context, bf16_supported, cpu_has_bf16, effective_precision, runnable_precision
from lavila.eval.cache import read_entry
from lavila.eval.embed import encode_texts
from lavila.eval.search import load_index, query_precision
from lavila.models import create_model
from tests.benchmark_files import KNEAD, PASTRY, link

# bf16 keeps 8 bits of mantissa: on these tiny random towers the measured minimum cosine to fp32 is 0.99999 (video
# encode, index and eval embeddings alike); 0.99 leaves room for other CPUs' kernels and larger models while still
# failing on a broken path (a wrong cast or scale gives ~0 or NaN).
COSINE_MIN = 0.99

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4, num_frames=4,
            text_width=32, text_layers=2, text_heads=4, text_vocab_size=100, text_context_length=12, embed_dim=16)
CPU = torch.device("cpu")


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **TINY).eval()
    with torch.no_grad():  # the reference init zeroes the time branch; perturb it so autocast covers that path too
        for block in model.visual.blocks:
            block.timeattn.qkv.weight.normal_(0, 0.05)
            block.timeattn.proj.weight.normal_(0, 0.05)
    return model


def test_auto_is_bf16_only_where_the_cpu_has_bf16_units(bf16_units):
    bf16_units(False)
    assert effective_precision(CPU, "auto") == "fp32"
    bf16_units(True)
    assert effective_precision(CPU, "auto") == "bf16"
    for explicit in ("fp32", "bf16", "fp16"):  # an explicit choice is never overridden
        assert effective_precision(CPU, explicit) == explicit
    with pytest.raises(ValueError, match="unknown precision"):
        effective_precision(CPU, "int8")


def test_auto_autocast_follows_the_detection(bf16_units):
    bf16_units(True)
    with autocast_context(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    bf16_units(False)
    with autocast_context(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_cpu_bf16_detection_can_be_forced_by_environment(monkeypatch):
    cpu_has_bf16.cache_clear()
    try:
        monkeypatch.setenv("LAVILA_CPU_BF16", "1")
        assert cpu_has_bf16() is True
        cpu_has_bf16.cache_clear()
        monkeypatch.setenv("LAVILA_CPU_BF16", "0")
        assert cpu_has_bf16() is False
    finally:
        cpu_has_bf16.cache_clear()
    monkeypatch.delenv("LAVILA_CPU_BF16")
    try:
        assert isinstance(cpu_has_bf16(), bool)  # the real detection answers without raising on any machine
    finally:
        cpu_has_bf16.cache_clear()  # later tests see the suite's LAVILA_CPU_BF16=0 again, not this machine's answer


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_low_precision_video_encode_runs_and_stays_close_to_fp32(precision, dtype):
    model = tiny_model()
    video = torch.randn(3, 3, 4, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(video)
        with autocast_context(CPU, precision):
            low = model.encode_image(video)
    assert low.dtype == dtype  # autocast really ran the matmuls in low precision
    assert ref.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32  # weights untouched
    cos = torch.nn.functional.cosine_similarity(low.float(), ref, dim=-1)
    assert cos.min() >= COSINE_MIN, cos


def test_bf16_text_encode_runs_and_stays_close_to_fp32():
    model = tiny_model()

    def tokenizer(texts):
        return torch.stack([torch.arange(1, 13) * (i + 1) % 100 for i in range(len(texts))])

    texts = ["a", "b", "c"]
    ref = encode_texts(model, tokenizer, texts, device=CPU, precision="fp32")
    low = encode_texts(model, tokenizer, texts, device=CPU, precision="bf16")
    assert low.dtype == ref.dtype  # outputs come back as float32 numpy arrays either way
    assert not np.array_equal(low, ref)  # the bf16 path really ran in bf16
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(low), torch.from_numpy(ref), dim=-1)
    assert cos.min() >= COSINE_MIN, cos


def test_eval_follows_the_one_precision_rule_of_lavila_dist(bf16_units):
    from lavila.eval import embed

    assert not hasattr(embed, "cpu_has_bf16") and not hasattr(embed, "effective_precision")  # no second copy
    seen = []

    class Spy(torch.nn.Module):
        def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return ids.float()

    for units in (True, False):  # patching lavila.dist alone steers the eval engine
        bf16_units(units)
        encode_texts(Spy(), lambda texts: torch.ones(len(texts), 2), ["a"], device=CPU, precision="auto")
    assert seen == [torch.bfloat16, None]


def test_fp16_off_cuda_is_refused_in_one_line_and_auto_never_picks_it(bf16_units):
    with pytest.raises(ConfigError, match="fp16 needs CUDA, but this index runs on cpu") as err:
        runnable_precision(CPU, "fp16", "this index")
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    for units in (True, False):
        bf16_units(units)
        assert runnable_precision(CPU, "auto", "x") == ("bf16" if units else "fp32")
    assert [runnable_precision(CPU, p, "x") for p in ("fp32", "bf16")] == ["fp32", "bf16"]


def test_search_query_precision_refuses_fp16_off_cuda_and_follows_the_index():
    with pytest.raises(ConfigError, match="fp16 needs CUDA, but this search runs on cpu"):
        query_precision({"precision": "fp32"}, CPU, "fp16")
    assert query_precision({"precision": "bf16"}, CPU, "fp32") == "fp32"  # an explicit choice is kept
    assert query_precision({"precision": "fp16"}, CPU, "auto") == "fp32"  # a GPU's fp16 index: this CPU's default


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cli_fp16_off_cuda_is_one_line_before_anything_is_written(tmp_path, tiny_checkpoint, ek100, device,
                                                                   capsys):
    if device == "auto" and torch.cuda.is_available():
        pytest.skip("auto resolves to CUDA here, where fp16 runs")
    out = tmp_path / "x.index"
    err = _one_line_error(capsys, ["index", str(ek100["root"]), "--checkpoint", str(tiny_checkpoint), "--out",
                                   str(out), "--precision", "fp16", "--device", device])
    assert "fp16 needs CUDA, but this index runs on cpu" in err and not out.exists()
    result, cache = tmp_path / "r.json", tmp_path / "cache"
    err = _one_line_error(capsys, ["eval", "ek100_mir", "--checkpoint", str(tiny_checkpoint), "--metadata",
                                   str(ek100["mir_csv"]), "--root", str(ek100["root"]), "--precision", "fp16",
                                   "--device", device, "--cache-dir", str(cache), "--output", str(result)])
    assert "fp16 needs CUDA, but this evaluation runs on cpu" in err
    assert not result.exists() and not cache.exists()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_index_every_precision_runs_and_bf16_stays_close_to_fp32(tmp_path, tiny_checkpoint, bf16_units):
    videos = tmp_path / "videos"
    link(KNEAD, videos / "knead.mp4")  # 5 s: 3 windows of 2 s
    link(PASTRY, videos / "pastry.mp4")  # 4 s: 2 windows
    indexes = {}
    for name, precision, units in [("fp32", "fp32", False), ("bf16", "bf16", False), ("auto", "auto", True)]:
        bf16_units(units)  # auto on a CPU with bf16 units = bf16
        out = tmp_path / f"{name}.index"
        assert cli_main(["index", str(videos), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                         "--workers", "0", "--batch-size", "2", "--precision", precision, "--device", "cpu"]) == 0
        indexes[name] = load_index(out)
    assert [indexes[k]["precision"] for k in ("fp32", "bf16", "auto")] == ["fp32", "bf16", "bf16"]
    fp32, bf16 = indexes["fp32"]["embeddings"].numpy(), indexes["bf16"]["embeddings"].numpy()
    assert fp32.shape == bf16.shape == (5, 16) and indexes["fp32"]["windows"] == indexes["bf16"]["windows"]
    assert not np.array_equal(fp32, bf16)  # autocast really lowered the matmuls
    cos = _cosines(bf16, fp32)
    assert cos.min() >= COSINE_MIN, cos
    np.testing.assert_allclose(indexes["auto"]["embeddings"].numpy(), bf16, atol=1e-6)  # auto ran the bf16 path


def test_eval_every_precision_runs_and_bf16_stays_close_to_fp32(tmp_path, ek100, tiny_checkpoint, bpe_path,
                                                                cache_dir, bf16_units):
    records = {}
    for name, precision, units in [("fp32", "fp32", False), ("bf16", "bf16", False), ("auto", "auto", True)]:
        bf16_units(units)
        out = tmp_path / f"{name}.json"
        assert cli_main(["eval", "ek100_mir", "--checkpoint", str(tiny_checkpoint), "--metadata",
                         str(ek100["mir_csv"]), "--root", str(ek100["root"]), "--precision", precision,
                         "--device", "cpu", "--bpe-path", str(bpe_path), "--cache-dir", str(cache_dir),
                         "--workers", "0", "--batch-size", "2", "--output", str(out)]) == 0
        records[name] = json.loads(out.read_text())
    assert [records[k]["precision"] for k in ("fp32", "bf16", "auto")] == ["fp32", "bf16", "bf16"]
    assert records["fp32"]["cache_file"] != records["bf16"]["cache_file"]  # precision is part of the cache key
    # auto resolved to bf16 before the cache key was made: it reuses the explicit bf16 run's embeddings
    assert records["auto"]["embeddings_from_cache"] and records["auto"]["cache_file"] == records["bf16"]["cache_file"]
    fp32, bf16 = (read_entry(records[k]["cache_file"])[0]["embeds"][:, 0] for k in ("fp32", "bf16"))
    assert fp32.shape == bf16.shape == (5, 16) and not np.array_equal(fp32, bf16)
    cos = _cosines(bf16, fp32)
    assert cos.min() >= COSINE_MIN, cos
    for rec in records.values():
        assert set(rec["metrics"]) >= {"mAP_avg", "nDCG_avg"} and all(np.isfinite(list(rec["metrics"].values())))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cuda_low_precision_video_encode_stays_close_to_fp32(precision, dtype):
    cuda = torch.device("cuda")
    if precision == "bf16" and not bf16_supported(cuda):
        pytest.skip("this GPU has no bf16 units")
    assert runnable_precision(cuda, precision, "x") == precision  # fp16 is allowed on CUDA
    model = tiny_model().to(cuda)
    video = torch.randn(3, 3, 4, 32, 32, device=cuda)
    with torch.no_grad():
        ref = model.encode_image(video)
        with autocast_context(cuda, precision):
            low = model.encode_image(video)
    assert low.dtype == dtype
    cos = torch.nn.functional.cosine_similarity(low.float(), ref, dim=-1)
    assert cos.min() >= COSINE_MIN, cos
