"""Inference precision: what ``auto`` resolves to, and that the bf16/fp16 autocast paths run and stay close to fp32."""

from __future__ import annotations

import pytest
import torch

from lavila import dist
from lavila.eval.embed import autocast_context, cpu_has_bf16, effective_precision, encode_texts
from lavila.models import create_model

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


@pytest.fixture
def bf16_units(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) bf16 units, independent of the test machine."""

    def set_(value: bool) -> None:
        monkeypatch.setattr(dist, "cpu_has_bf16", lambda: value)  # the one rule lives in lavila.dist

    return set_


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
    assert cos.min() >= 0.99, cos


def test_bf16_text_encode_runs_and_stays_close_to_fp32():
    model = tiny_model()

    def tokenizer(texts):
        return torch.stack([torch.arange(1, 13) * (i + 1) % 100 for i in range(len(texts))])

    texts = ["a", "b", "c"]
    ref = encode_texts(model, tokenizer, texts, device=CPU, precision="fp32")
    low = encode_texts(model, tokenizer, texts, device=CPU, precision="bf16")
    assert low.dtype == ref.dtype  # outputs come back as float32 numpy arrays either way
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(low), torch.from_numpy(ref), dim=-1)
    assert cos.min() >= 0.99, cos


def test_eval_uses_the_one_precision_rule_of_lavila_dist():
    from lavila.eval import embed

    assert embed.effective_precision is dist.effective_precision
    assert embed.autocast_context is dist.autocast_context
