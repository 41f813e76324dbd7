"""Loading checkpoints, the reference's and ours, into registry models.

Reference checkpoints are ``{state_dict (DDP 'module.' prefix), args (argparse.Namespace), epoch, ...}``. Loading
strips ``module.``, adapts the temporal embedding to the model's frame count (the reference's
``inflate_positional_embeds``), optionally interpolates the spatial position table (beyond the reference, which
refuses), and reports any mismatch key by key instead of a stack trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lavila.errors import LavilaError
from lavila.models.config import ModelConfig, apply_overrides
from lavila.models.registry import MODEL_CONFIGS, get_config, row_from_dict


class CheckpointMismatchError(LavilaError, RuntimeError):
    """A state dict that does not fit the model; the message lists every offending key."""


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def inflate_temporal_embed(loaded: torch.Tensor, num_frames: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize a ``[1, T_ckpt, D]`` temporal embedding to ``num_frames`` rows (reference semantics).

    Fewer frames keep the first rows whatever the mode. More frames: ``bilinear`` interpolates the table as a
    ``[1,1,T,D]`` image (align_corners=False, so only along T), ``nearest`` (alias ``interp``) repeats, ``zeros`` copies
    and zero-fills.
    """
    t_old = loaded.shape[1]
    if num_frames <= t_old:
        return loaded[:, :num_frames].clone()
    if mode == "zeros":
        out = loaded.new_zeros(1, num_frames, loaded.shape[2])
        out[:, :t_old] = loaded
        return out
    interp = {"bilinear": "bilinear", "nearest": "nearest", "interp": "nearest"}.get(mode)
    if interp is None:
        raise ValueError(f"unknown temporal inflation mode {mode!r} (bilinear, nearest/interp, zeros)")
    return F.interpolate(loaded.unsqueeze(0), (num_frames, loaded.shape[2]), mode=interp).squeeze(0)


def interpolate_pos_embed(loaded: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bicubic resize of a ``[1, 1+N, D]`` spatial table to another patch grid (e.g. a checkpoint at another size)."""
    old = int(math.isqrt(loaded.shape[1] - 1))
    new = int(math.isqrt(num_patches))
    if old * old != loaded.shape[1] - 1 or new * new != num_patches:
        raise ValueError(f"cannot interpolate a position table of {loaded.shape[1] - 1} patches to {num_patches}")
    grid = loaded[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False).to(loaded.dtype)
    return torch.cat([loaded[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)


def adapt_state_dict(model: nn.Module, state_dict: Mapping[str, Any], temporal_mode: str = "bilinear",
                     interpolate_pos: bool = False) -> dict[str, Any]:
    """Strip ``module.`` and resize the visual position tables to the model's (frames, and resolution if asked)."""
    sd = strip_prefix(state_dict)
    own = model.state_dict()
    for prefix in {k[: -len("temporal_embed")] for k in own if k.endswith("visual.temporal_embed")} | (
        {""} if "temporal_embed" in own else set()
    ):
        key = prefix + "temporal_embed"
        if key in sd and key in own and sd[key].shape != own[key].shape:
            sd[key] = inflate_temporal_embed(sd[key], own[key].shape[1], temporal_mode)
        pkey = prefix + "pos_embed"
        if pkey in sd and pkey in own and sd[pkey].shape != own[pkey].shape:
            if not interpolate_pos:
                raise CheckpointMismatchError(
                    f"{pkey}: checkpoint has {sd[pkey].shape[1] - 1} patches per frame, the model "
                    f"{own[pkey].shape[1] - 1} (another resolution or patch size). The reference cannot load this; "
                    "pass interpolate_pos=True (--interpolate-pos-embed) to resize the table bicubically."
                )
            sd[pkey] = interpolate_pos_embed(sd[pkey], own[pkey].shape[1] - 1)
    return sd


def load_state_dict_into(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True,
                         temporal_mode: str = "bilinear", interpolate_pos: bool = False) -> list[str]:
    """Load with reference-compatible adaptation; mismatches raise one error naming every key.

    Returns the list of missing keys when ``strict=False`` (the narrator uses this to load only ``visual.*``).
    """
    sd = adapt_state_dict(model, state_dict, temporal_mode, interpolate_pos)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)]
    if shapes or (strict and (missing or unexpected)):
        def listing(title: str, items: list[str], sep: str = ", ") -> str:
            return f"{title} ({len(items)}): " + sep.join(items[:20]) + (" ..." if len(items) > 20 else "")

        lines = []
        if missing and strict:
            lines.append(listing("missing keys", missing))
        if unexpected and strict:
            lines.append(listing("unexpected keys", unexpected))
        if shapes:
            lines.append(listing("shape mismatches", shapes, "; "))
        raise CheckpointMismatchError("state dict does not fit the model:\n  " + "\n  ".join(lines))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return missing


class CheckpointError(LavilaError, RuntimeError):
    """A checkpoint that cannot be read or does not say which model it holds; the message names the file."""


WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def read_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """The one checkpoint reader: ours, the reference's ``.pth`` (pickled ``args`` Namespace) or a pretrained folder.

    ``.pth``/``.pt`` files are read with ``weights_only=True`` and ``argparse.Namespace`` allow-listed, which reads
    both ours and the reference's; a file that needs arbitrary unpickling is refused unless ``trust``
    (``--trust-checkpoint``), because unpickling runs code. A ``save_pretrained`` folder (``config.json`` +
    ``model.safetensors``) or a bare ``.safetensors`` file is read without any pickle. Returns
    ``{"state_dict", ["model_config" | "args"], ...}``.
    """
    path = Path(path)
    if path.is_dir():
        return _read_pretrained_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {"state_dict": load_file(str(path))}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = _torch_load(path)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal
        if not trust:
            raise CheckpointError(
                f"{path}: cannot be read with torch.load(weights_only=True) ({str(err).splitlines()[0]}); if you "
                "trust this file, pass --trust-checkpoint, or convert it once with `lavila convert`") from err
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    if "state_dict" not in ckpt and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"state_dict": ckpt}  # a bare state dict
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: no 'state_dict' in this checkpoint (keys: {', '.join(map(str, ckpt))})")
    return ckpt


def _torch_load(path: Path) -> Any:
    """``weights_only`` load, memory-mapped where the file allows it (reading a config twice then costs nothing)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) serialization


def _read_pretrained_folder(folder: Path) -> dict[str, Any]:
    import json

    from safetensors.torch import load_file

    config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for f in (config, weights):
        if not f.is_file():
            raise CheckpointError(f"{folder}: not a pretrained model folder ({f.name} missing; write one with "
                                  "`lavila convert` or model.save_pretrained)")
    try:
        meta = json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise CheckpointError(f"{config}: no 'model_config' (not written by lavila)")
    state_dict = load_file(str(weights))
    for alias, kept in meta.get("tied_weights", {}).items():
        state_dict[alias] = state_dict[kept]
    return {"state_dict": state_dict, **meta, "pretrained_dir": str(folder)}


def _args_dict(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    args = ckpt.get("args")
    return vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})


def classifier_head_sizes(state_dict: Mapping[str, Any]) -> list[int]:
    """Class count of each ``fc_cls`` head of a (``module.``-stripped) state dict; empty for other models."""
    if "fc_cls.bias" in state_dict:
        return [int(state_dict["fc_cls.bias"].shape[0])]
    sizes = []
    while f"fc_cls.{len(sizes)}.bias" in state_dict:
        sizes.append(int(state_dict[f"fc_cls.{len(sizes)}.bias"].shape[0]))
    return sizes


def config_from_checkpoint(ckpt: Mapping[str, Any], arch: str | None = None, **overrides: Any) -> ModelConfig:
    """The registry row a checkpoint holds: our ``model_config``, else the reference's ``args``.

    Reference fine-tuning checkpoints store the fine-tuning script's arguments, which do not name the backbone:
    ``arch`` (``--model``) names it then. A state dict with ``fc_cls`` heads is a classifier of that backbone.
    """
    heads = classifier_head_sizes(strip_prefix(ckpt.get("state_dict", {})))
    if "model_config" in ckpt and arch is None:
        cfg = row_from_dict(dict(ckpt["model_config"]))
        if heads and cfg.kind != "classifier":  # written with the backbone's row before classifiers had their own
            cfg = dataclasses.replace(cfg, kind="classifier", num_classes=tuple(heads))
        return apply_overrides(cfg, **overrides)
    a = _args_dict(ckpt)
    name = arch or a.get("model")
    if not name:
        raise CheckpointError("checkpoint has neither 'model_config' nor 'args.model': cannot tell which model it "
                              "is; pass --model NAME")
    if str(name) not in MODEL_CONFIGS:
        raise CheckpointError(f"args.model={name!r} is not a registry model (`lavila models` lists them); pass --model")
    is_narrator = MODEL_CONFIGS[str(name)].kind == "vclm"
    kw: dict[str, Any] = {}
    if a.get("project_embed_dim") is not None and not is_narrator:
        kw["embed_dim"] = a["project_embed_dim"]
    if a.get("clip_length") is not None:
        kw["num_frames"] = a["clip_length"]
    if a.get("norm_embed") is not None and not is_narrator:
        kw["norm_embed"] = bool(a["norm_embed"])
    if "gated_xattn" in a and is_narrator:
        kw["gated_xattn"] = bool(a["gated_xattn"])
    if heads:
        kw.update(kind="classifier", num_classes=tuple(heads), dropout=float(a.get("dropout_rate", 0.0) or 0.0))
    kw.update(overrides)
    kind = kw.pop("kind", None)
    cfg = get_config(str(name), **kw)
    return dataclasses.replace(cfg, kind=kind) if kind else cfg


def manifest_diff(model: nn.Module, manifest_entry: Mapping[str, Any]) -> list[str]:
    """Differences between a model's state dict and a reference manifest entry (empty list = loads strictly)."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = {k: tuple(shape) for k, shape, _ in manifest_entry["state_dict"]}
    problems = [f"missing in model: {k}" for k in ref if k not in own]
    problems += [f"not in reference: {k}" for k in own if k not in ref]
    problems += [f"shape {k}: model {own[k]} vs reference {ref[k]}" for k in ref if k in own and own[k] != ref[k]]
    return problems
