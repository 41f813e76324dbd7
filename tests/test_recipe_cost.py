"""``benchmarks/recipe_cost.py``: the meta-device FLOP count is the real one, and the projection is its formula."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_cost.py"
TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
            text_layers=1, text_heads=2, embed_dim=16)


@pytest.fixture(scope="module")
def recipe_cost():
    spec = importlib.util.spec_from_file_location("recipe_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_meta_count_matches_real_tensors_and_the_analytic_text_tower(recipe_cost):
    meta = recipe_cost.count_flops(device="meta", **TINY)
    real = recipe_cost.count_flops(device="cpu", **TINY)
    assert meta["train"] == real["train"] > 0  # shapes alone decide the count: meta needs no arithmetic
    # CLIP text tower, width w, 1 layer, n = 77 tokens: qkv + out (4w^2) and MLP (8w^2) per token, QK^T and AV
    # (2 n^2 w), projection of the EOT token to the embedding (w E); FLOPs = 2 x multiply-adds
    w, n, e = 32, 77, 16
    assert meta["text"] == 2 * n * 12 * w * w + 4 * n * n * w + 2 * w * e
    assert meta["train"] > 2 * (meta["visual"] + meta["text"])  # backward costs about twice the forward


def test_projection_is_flops_over_gpus_peak_and_mfu(recipe_cost):
    p = recipe_cost.projection(flops_per_clip=6e11, clips=4e7, gpus=8, peak_tflops=1000.0, mfu=0.5)
    seconds = 6e11 * 4e7 / (8 * 1000e12 * 0.5)
    assert p["wall_h"] == pytest.approx(seconds / 3600) and p["gpu_h"] == pytest.approx(8 * seconds / 3600)
    assert p["clips_per_s"] == pytest.approx(4e7 / seconds)
    table = recipe_cost.main(["--tiny", "--mfu", "0.3", "0.5", "--loader-clips-per-core-s", "20"])
    assert "| 30% |" in table and "| 50% |" in table and "loader cores needed" in table
