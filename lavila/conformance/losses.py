"""Conformance of the contrastive losses against ``losses_<variant>.pt`` (reference CLIPLoss / SSLCLIPLoss).

The fixture holds embeddings, the exponentiated ``logit_scale``, bool ``gt_indicators`` and one result dict per
loss configuration; everything is rebuilt from the fixture's own tensors, so any batch size or width works.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lavila.conformance import Check
from lavila.models.losses import CLIPLoss, SSLCLIPLoss

LOSS_TOL = 1e-4  # README: atol 1e-4 for logits and losses
METRIC_TOL = 1e-4  # accuracies (percent) and counts are exact up to float32 rounding
DEFAULT_PSEUDO_TEMPERATURE = 0.08  # the reference SSLCLIPLoss default, which the generator used


def _criterion(key: str, fixture: dict) -> torch.nn.Module:
    """The loss a result key names: 'vissl=True'/'vissl=False' -> CLIPLoss, 'ssl*' -> SSLCLIPLoss."""
    if key.startswith("ssl"):
        init = float(fixture.get("pseudo_temperature_init", DEFAULT_PSEUDO_TEMPERATURE))
        return SSLCLIPLoss(pseudo_temperature_init=init)
    if key.startswith("vissl="):
        return CLIPLoss(use_vissl=key.split("=", 1)[1] == "True")
    raise ValueError(f"unknown loss configuration '{key}'")


def check_losses(path: Path) -> list[Check]:
    name = Path(path).name
    try:
        fixture = torch.load(path, weights_only=False, map_location="cpu")
        outputs = {k: fixture[k] for k in ("image_embed", "text_embed", "logit_scale")}
        results = fixture["results"]
    except KeyError as err:
        raise ValueError(f"{path}: missing field {err}") from err
    checks: list[Check] = []
    for key, expected in results.items():
        try:
            criterion = _criterion(key, fixture)
        except ValueError:
            checks.append(Check.compare(name, f"{key}/known_configuration", math.inf, 0.0))
            continue
        with torch.no_grad():
            if isinstance(criterion, SSLCLIPLoss):
                got = criterion({**outputs, "gt_indicators": fixture["gt_indicators"]})
            else:
                got = criterion(outputs)
        for metric, value in expected.items():
            if metric not in got:
                checks.append(Check.compare(name, f"{key}/{metric}", math.inf, 0.0))
                continue
            err = abs(float(got[metric]) - float(value))
            tol = LOSS_TOL if "loss" in metric else METRIC_TOL
            checks.append(Check.compare(name, f"{key}/{metric}", err, tol))
    return checks
