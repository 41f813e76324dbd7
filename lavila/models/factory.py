"""The one way to build, load and save a model (open_clip / HF style).

Every verb, task, benchmark and test goes through these functions, so a model is built from its registry row
(:mod:`lavila.models.registry`) in exactly one place, pretrained towers are loaded in exactly one place, and the
preprocessing and tokenizer always come from the row that the weights were trained with:

* :func:`create_model` -- a registry name (random or ``pretrained`` towers), a checkpoint file (ours or a released
  reference ``.pth``) or a ``save_pretrained`` folder;
* :func:`create_model_and_transforms` -- the same plus the row's train/eval video transforms;
* :func:`get_tokenizer` -- the row's tokenizer, checked against the row;
* :func:`load_checkpoint` -- weights into an existing model (strict, ``module.`` stripped, frames adapted);
* :func:`save_pretrained` / :func:`from_pretrained` -- ``config.json`` + ``model.safetensors`` (+ tokenizer files),
  a folder any verb accepts and that needs no pickle to load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from lavila.models.checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    CheckpointMismatchError,
    config_from_checkpoint,
    load_state_dict_into,
    read_checkpoint,
)
from lavila.models.config import ModelConfig
from lavila.models.pretrained import save_pretrained
from lavila.models.registry import MODEL_CONFIGS, get_config
from lavila.models.tokenizers import Tokenizer, get_tokenizer
from lavila.models.transforms import VideoTransform, eval_transform, train_transform

__all__ = ["build_model", "create_model", "create_model_and_transforms", "from_pretrained", "get_model_config",
           "get_tokenizer",
           "load_checkpoint", "model_transforms", "save_pretrained", "tokenizer_for"]


def build_model(cfg: ModelConfig, *, pretrained: bool | str = False, **model_kwargs: Any) -> nn.Module:
    """Instantiate the towers of ``cfg`` (random weights unless ``pretrained``).

    ``pretrained`` starts a model the way the reference's stage 1 does: dual encoders and classifiers take the
    OpenAI CLIP visual (and CLIP text) tower (``True`` = the row's HF hub name; a string = a CLIP ``.pt`` file, an
    HF folder or hub name) and DistilBERT from ``text.hf_name``; narrators take GPT-2 from ``text.hf_name``.
    ``model_kwargs`` are constructor options that are not part of the row (narrator freezing, checkpointing).
    """
    if cfg.kind == "dual_encoder":
        from lavila.models.dual_encoder import DualEncoder

        model: nn.Module = DualEncoder(cfg, pretrained_text=bool(pretrained) and cfg.text.kind == "distilbert",
                                       **model_kwargs)
    elif cfg.kind == "vclm":
        from lavila.models.narrator import VCLM

        return VCLM(cfg, pretrained=bool(pretrained), **model_kwargs)
    elif cfg.kind == "classifier":
        from lavila.models.classifier import build_classifier
        from lavila.models.timesformer import build_vision_tower

        model = build_classifier(build_vision_tower(cfg.vision), cfg.num_classes, cfg.dropout, config=cfg,
                                 **model_kwargs)
    else:
        raise ValueError(f"model {cfg.name}: unknown kind {cfg.kind!r}")
    if pretrained and cfg.pretrained_vision:
        from lavila.models.clip_init import init_from_openai_clip

        report = init_from_openai_clip(model, None if pretrained is True else str(pretrained))
        model.init_report = report  # type: ignore[attr-defined] - shown by the training task
    return model


def _is_path(name_or_path: str | os.PathLike) -> bool:
    return str(name_or_path) not in MODEL_CONFIGS and (Path(name_or_path).exists() or os.sep in str(name_or_path)
                                                       or str(name_or_path).endswith((".pt", ".pth")))


def create_model(
    name_or_path: str | os.PathLike,
    pretrained: bool | str = False,
    *,
    arch: str | None = None,
    kind: str | tuple[str, ...] | None = None,
    strict: bool = True,
    trust_checkpoint: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> nn.Module:
    """A model by registry name, checkpoint file or pretrained folder.

    Overrides are flat row fields (``num_frames=16``, ``embed_dim=512``, ``img_size=32``, ``vision_layers=2``, ...);
    with a checkpoint they rebuild the model at, e.g., another frame count before the weights are loaded (the
    temporal embedding is inflated or cut, as the reference does). ``arch`` names the registry row of a reference
    fine-tuning checkpoint, whose ``args`` do not. ``kind`` refuses, before anything is built, a model of another
    kind (a dual encoder given to ``narrate``). The model comes back in training mode on the CPU.
    """
    kwargs = model_kwargs or {}
    if not _is_path(name_or_path):
        cfg = get_config(str(name_or_path), **overrides)
        _check_kind(cfg, kind, str(name_or_path))
        return build_model(cfg, pretrained=pretrained, **kwargs)
    path = Path(name_or_path)
    ckpt = read_checkpoint(path, trust=trust_checkpoint)
    try:
        cfg = config_from_checkpoint(ckpt, arch=arch, **overrides)
    except (CheckpointError, KeyError) as err:
        raise CheckpointError(f"{path}: {err.args[0]}") from None
    _check_kind(cfg, kind, str(path))
    model = build_model(cfg, **kwargs)
    try:
        load_state_dict_into(model, ckpt["state_dict"], strict=strict)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{path} ({cfg.name}): {err}") from None
    model.source_path = str(path)  # type: ignore[attr-defined] - where the weights came from (tokenizer files)
    model.checkpoint_meta = {k: v for k, v in ckpt.items() if k != "state_dict"}  # type: ignore[attr-defined]
    return model


KIND_USES = {"dual_encoder": "a dual encoder (for eval, index, search)", "vclm": "a narrator (for narrate, "
              "eval-narrator)", "classifier": "a fine-tuned classifier (for eval)"}


def _check_kind(cfg: ModelConfig, kind: str | tuple[str, ...] | None, source: str) -> None:
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and cfg.kind not in kinds:
        wanted = " or ".join(KIND_USES.get(k, k) for k in kinds)
        raise CheckpointError(f"{source} holds {KIND_USES.get(cfg.kind, cfg.kind)} ({cfg.name}); this needs {wanted}")


def get_model_config(name_or_path: str | os.PathLike, *, arch: str | None = None, trust_checkpoint: bool = False,
                     **overrides: Any) -> ModelConfig:
    """The row a name, checkpoint or folder stands for, without building the model (checkpoints are memory-mapped)."""
    if not _is_path(name_or_path):
        return get_config(str(name_or_path), **overrides)
    ckpt = read_checkpoint(name_or_path, trust=trust_checkpoint)
    try:
        return config_from_checkpoint(ckpt, arch=arch, **overrides)
    except (CheckpointError, KeyError) as err:
        raise CheckpointError(f"{name_or_path}: {err.args[0]}") from None


def model_transforms(model_or_cfg: nn.Module | ModelConfig, **eval_kwargs: Any) -> tuple[VideoTransform,
                                                                                         VideoTransform]:
    """(train, eval) video transforms of a model's row: its crop, pixel statistics and resize mode.

    Every verb preprocesses through these (float frames, resized before rounding), so narration, indexing and
    evaluation feed a model exactly what its training data loader fed it. ``eval_kwargs`` select the multi-view
    evaluation variants (``num_clips``, ``num_crops``, ``clip_length``, ...).
    """
    cfg = model_or_cfg if isinstance(model_or_cfg, ModelConfig) else model_or_cfg.config
    p, crop = cfg.preprocess, cfg.vision.img_size
    return (train_transform(crop, p.mean, p.std, antialias=p.antialias),
            eval_transform(crop, p.mean, p.std, antialias=p.antialias, **eval_kwargs))


def create_model_and_transforms(name_or_path: str | os.PathLike, pretrained: bool | str = False,
                                **kwargs: Any) -> tuple[nn.Module, VideoTransform, VideoTransform]:
    """``(model, train_transform, eval_transform)``: :func:`create_model` plus :func:`model_transforms`."""
    model = create_model(name_or_path, pretrained, **kwargs)
    return (model, *model_transforms(model))


def tokenizer_for(model: nn.Module, source: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer of a built model: ``source`` if given, else the files saved beside its weights, else the row's."""
    meta = getattr(model, "checkpoint_meta", {})
    if source is None:
        folder = getattr(model, "source_path", None)
        if folder and Path(folder).is_dir():
            source = folder
        elif meta.get("tokenizer_json"):
            return get_tokenizer(model.config, checkpoint=meta)
        elif isinstance(meta.get("config"), dict) and meta["config"].get("tokenizer"):
            source = meta["config"]["tokenizer"]  # the training run's --tokenizer, recorded in its checkpoint
    return get_tokenizer(model.config, source=source)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                    trust_checkpoint: bool = False) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (reference ``.pth``, ours, or a pretrained folder).

    Returns the checkpoint's other entries (``args``, ``epoch``, ...).
    """
    ckpt = read_checkpoint(path, trust=trust_checkpoint)
    try:
        load_state_dict_into(model, ckpt["state_dict"], strict=strict)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{path}: {err}") from None
    return {k: v for k, v in ckpt.items() if k != "state_dict"}


def from_pretrained(folder: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Build and load a ``save_pretrained`` folder (no pickle involved)."""
    if not (Path(folder) / CONFIG_NAME).is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} (not a folder written by save_pretrained/lavila convert)")
    return create_model(folder, **overrides)
