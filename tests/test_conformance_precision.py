"""Conformance fixtures always run fp32: even where ``auto`` would pick bf16, ``lavila conformance`` never autocasts."""

from __future__ import annotations

import json

import torch

from lavila import dist
from lavila.cli import main


def test_conformance_never_autocasts_even_with_bf16_units(reference_dir, monkeypatch, capsys):
    monkeypatch.setattr(dist, "cpu_has_bf16", lambda: True)  # `auto` would now mean bf16 everywhere else
    entered = []

    class NoAutocast(torch.autocast):
        def __enter__(self):
            entered.append(self.fast_dtype)
            return super().__enter__()

    monkeypatch.setattr(torch, "autocast", NoAutocast)
    code = main(["conformance", str(reference_dir / "clip_tiny_public.pt"), str(reference_dir / "vclm_tiny_public.pt")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0 and lines and all(line["ok"] for line in lines)
    assert not entered and not torch.is_autocast_enabled("cpu")
