"""Narration precision: ``--precision`` (and the legacy ``--use-half``) resolve by the one device rule, bf16 runs on
CPU with bf16 weights and its texts/scores stay close to fp32, fp16 off CUDA is refused, and bf16 jobs fingerprint."""

from __future__ import annotations

import logging

import pytest
import torch

from lavila.config import ConfigError
from lavila.errors import LavilaError
from lavila.narrate.generate import GenerationConfig
from lavila.narrate.narrate import NarrateJob, _load_model, narrate_batch, narrate_precision

CPU = torch.device("cpu")


def where(key: str) -> str:
    return f"key {key!r}"


def test_auto_follows_the_hardware_and_explicit_choices_win(bf16_units):
    job = NarrateJob(checkpoint="x", videos=["v.mp4"])
    bf16_units(False)
    assert narrate_precision(job, CPU) == "fp32"
    bf16_units(True)
    assert narrate_precision(job, CPU) == "bf16"
    assert narrate_precision(NarrateJob(checkpoint="x", videos=["v.mp4"], precision="fp32"), CPU) == "fp32"


def test_fp16_on_cpu_is_refused_but_legacy_use_half_falls_back(caplog):
    with pytest.raises(LavilaError, match="fp16 needs CUDA") as err:
        narrate_precision(NarrateJob(checkpoint="x", videos=["v.mp4"], precision="fp16"), CPU)
    assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        assert narrate_precision(NarrateJob(checkpoint="x", videos=["v.mp4"], use_half=True), CPU) == "fp32"
    assert "--use-half ignored" in caplog.text


@pytest.mark.parametrize("values, key", [({"use_half": True, "precision": "bf16"}, "use_half"),
                                         ({"precision": "fp16", "device": "cpu"}, "precision")])
def test_contradicting_precision_flags_are_config_errors(values, key):
    with pytest.raises(ConfigError, match=key):
        NarrateJob(checkpoint="x", videos=["v.mp4"], **values).validate(where)


def test_only_bf16_jobs_get_a_precision_key_in_the_fingerprint(tmp_path, bf16_units):
    meta = tmp_path / "m.pkl"
    meta.write_bytes(b"x")
    (tmp_path / "c.pt").write_bytes(b"x")

    def fingerprint(**kw):
        return NarrateJob(checkpoint=str(tmp_path / "c.pt"), metadata=str(meta), output_dir="o", **kw).fingerprint(CPU)

    bf16_units(False)
    old = fingerprint()
    assert "precision" not in old  # fp32 jobs keep the fingerprint of earlier versions (their folders resume)
    assert fingerprint(precision="fp16")["use_half"] is True and fingerprint(use_half=True)["use_half"] is True
    assert fingerprint(precision="bf16")["precision"] == "bf16"
    bf16_units(True)
    assert fingerprint()["precision"] == "bf16"  # auto resolved to bf16 on this hardware
    assert "precision" not in fingerprint(precision="fp32")


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_bf16_narration_runs_and_stays_close_to_fp32(tiny_checkpoint, strategy):
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    gen = GenerationConfig(strategy=strategy, num_return_sequences=1 if strategy == "greedy" else 3, max_len=12)
    out = {}
    for precision in ("fp32", "bf16"):
        job = NarrateJob(checkpoint=str(tiny_checkpoint), videos=["v.mp4"], precision=precision, device="cpu")
        model, tok = _load_model(job, CPU)
        # bf16 is bf16 weights (generation reads every weight at every token: half the bytes), fp32 as loaded
        assert next(model.parameters()).dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        out[precision] = narrate_batch(model, tok, video, gen,
                                       generators=[torch.Generator().manual_seed(i) for i in range(2)])
    for (t32, s32), (t16, s16) in zip(out["fp32"], out["bf16"]):
        assert len(t16) == len(t32) and all(isinstance(t, str) for t in t16)
        if strategy == "greedy":  # no sampling noise: the same tokens, scores within bf16 rounding
            assert t16 == t32
            assert max(abs(a - b) / abs(a) for a, b in zip(s16, s32)) < 1e-3, (s32, s16)
        else:  # sampling may branch after a near-tie, but the first candidate's score stays close
            assert abs(s16[0] - s32[0]) / abs(s32[0]) < 1e-2, (s32, s16)
