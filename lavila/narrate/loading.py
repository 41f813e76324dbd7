"""Narrator checkpoints: load one (ours, the reference's or a pretrained folder) with its tokenizer.

Building and weight loading go through the factory (:func:`lavila.models.create_model`); the tokenizer is the
row's, found by :func:`lavila.models.tokenizer_for` (``--tokenizer``, the files beside the weights, a vocabulary
embedded in one of our checkpoints, then the row's GPT-2), and checked against the model's BOS/EOS.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lavila.models import create_model, tokenizer_for
from lavila.models.tokenizers import HFGPT2Tokenizer


def load_narrator(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    tokenizer: str | os.PathLike | None = None,
    num_frames: int | None = None,
    trust_checkpoint: bool = False,
) -> tuple[nn.Module, HFGPT2Tokenizer, dict[str, Any]]:
    """The checkpoint's VCLM in eval mode on ``device``, its tokenizer and the checkpoint's other entries."""
    overrides = {"num_frames": num_frames} if num_frames else {}
    model = create_model(path, kind="vclm", trust_checkpoint=trust_checkpoint, **overrides)
    model.eval().to(device)
    tok = tokenizer_for(model, tokenizer)
    if tok.eos_token_id != model.eos_token_id or tok.bos_token_id != model.bos_token_id:
        raise ValueError(f"{path}: tokenizer BOS/EOS ({tok.bos_token_id}/{tok.eos_token_id}) differ from the model's "
                         f"({model.bos_token_id}/{model.eos_token_id}); pass the matching --tokenizer")
    return model, tok, model.checkpoint_meta if hasattr(model, "checkpoint_meta") else {}


def save_narrator_checkpoint(path: str | os.PathLike, model: nn.Module, *, tokenizer_json: str | None = None,
                             **extra: Any) -> os.PathLike:
    """Write ``{state_dict, model_config, [tokenizer_json], **extra}`` atomically (loadable by ``load_narrator``).

    The single-file form of a narrator; ``model.save_pretrained(dir, tokenizer)`` writes the pickle-free folder.
    """
    from pathlib import Path

    from lavila.atomic import atomic_save
    from lavila.models.config import config_to_dict

    state = {"state_dict": model.state_dict(), "model_config": config_to_dict(model.config), **extra}
    if tokenizer_json is not None:
        state["tokenizer_json"] = tokenizer_json
    atomic_save(state, path)
    return Path(path)
