"""``model.save_pretrained(dir)`` / ``Model.from_pretrained(dir)`` on every model class (the HF convention).

A folder holds ``config.json`` (the registry row) and ``model.safetensors`` (+ the tokenizer's files): loading it
runs no pickle, so a model can be handed to someone else safely, and it carries its preprocessing and tokenizer.
This module imports no tower, so the towers can inherit from :class:`PretrainedMixin` without a cycle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lavila.models.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    config_from_checkpoint,
    load_state_dict_into,
    read_checkpoint,
)
from lavila.models.config import ModelConfig, config_to_dict

FORMAT_VERSION = 1


def save_pretrained(model: Any, folder: str | os.PathLike, tokenizer: Any = None, **meta: Any) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer's files) into ``folder``.

    Each file is replaced atomically, and ``config.json`` is written last, so a kill at any point leaves either
    the previous complete folder or the new one's weights without a config (which loading refuses by name).
    """
    from safetensors.torch import save_file

    from lavila.atomic import atomic_target, atomic_write_text
    from lavila.models.tokenizers import save_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, tied = _untie(model.state_dict())
    with atomic_target(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp))
    if tokenizer is not None:
        save_tokenizer(tokenizer, folder)
    doc = {"format": "lavila", "format_version": FORMAT_VERSION, "model_config": config_to_dict(model.config),
           "tied_weights": tied, **meta}
    atomic_write_text(folder / CONFIG_NAME, json.dumps(doc, indent=2, default=str) + "\n")
    return folder


def _untie(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Safetensors stores each storage once: keep the first name of shared tensors, record the others as aliases.

    (GPT-2's ``lm_head.weight`` is ``wte.weight``; the alias map in ``config.json`` restores both names on load.)
    """
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    tensors: dict[str, Any] = {}
    tied: dict[str, str] = {}
    for name, t in state_dict.items():
        key = (t.data_ptr(), tuple(t.shape))
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().contiguous()
    return tensors, tied


class PretrainedMixin:
    """Adds ``save_pretrained`` and the ``from_pretrained`` class method; subclasses define ``from_config``."""

    config: ModelConfig

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Any:
        return cls(cfg)  # type: ignore[call-arg]

    def save_pretrained(self, folder: str | os.PathLike, tokenizer: Any = None, **meta: Any) -> Path:
        return save_pretrained(self, folder, tokenizer, **meta)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides: Any) -> Any:
        """Load a ``save_pretrained`` / ``lavila convert`` folder; ``overrides`` as in ``create_model``."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file():
            raise CheckpointError(f"{folder}: no {CONFIG_NAME} (not a folder written by save_pretrained or "
                                  "`lavila convert`)")
        ckpt = read_checkpoint(folder)
        cfg = config_from_checkpoint(ckpt, **overrides)
        model = cls.from_config(cfg)
        load_state_dict_into(model, ckpt["state_dict"], strict=True)
        model.source_path = str(folder)
        return model
