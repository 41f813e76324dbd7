"""Shared test fixtures: the reference fixtures and media are read from ../shared, never copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAVILA_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "fixtures" / "reference"
MEDIA = SHARED / "media"

torch.set_num_threads(min(2, torch.get_num_threads()))
# No network at test time: any code path that would reach the HF hub fails fast instead of retrying for minutes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite does not depend on the CPU it runs on: `--precision auto` means fp32 on every test machine, as on a CPU
# without bf16 units (an AVX-512-BF16 machine would otherwise train and embed in bf16 wherever a test leaves the
# default, and comparisons with fp32 references would fail there only). Tests of the bf16 paths ask for bf16
# explicitly or patch the detection (tests/eval/test_precision.py); subprocesses inherit the variable.
os.environ.setdefault("LAVILA_CPU_BF16", "0")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE} (set LAVILA_SHARED to the shared/ folder)")
    return REFERENCE


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not MEDIA.is_dir():
        pytest.skip(f"shared media not found at {MEDIA} (set LAVILA_SHARED to the shared/ folder)")
    return MEDIA


@pytest.fixture
def bf16_units(monkeypatch):
    """``bf16_units(True/False)``: pretend the CPU has or lacks bf16 units, independent of the test machine.

    Patches the one detection every entry point consults (``lavila.dist.cpu_has_bf16``), so ``--precision auto``
    of train, eval, index and narrate follows it alike.
    """
    from lavila import dist

    def set_(value: bool) -> None:
        monkeypatch.setattr(dist, "cpu_has_bf16", lambda: value)

    return set_


def reference_file(name: str) -> Path:
    """Path of one reference fixture, skipping the calling test when the shared folder is absent."""
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference fixture {path} not found (set LAVILA_SHARED to the shared/ folder)")
    return path


# Tiny benchmark datasets (EK-100, Charades-Ego, EGTEA, EgoMCQ) used by the evaluation and fine-tuning tests.
pytest_plugins = ["tests.benchmark_fixtures"]
