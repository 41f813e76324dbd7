"""Narrator checkpoints: load (ours or the reference's) with their tokenizer, and save ours.

Our narrator checkpoints carry ``model_config`` (the registry row as a dict) and, for models with a custom
vocabulary, the HF tokenizer itself as JSON (``tokenizer_json``) so a checkpoint is self-contained. Reference
checkpoints (``args.model`` = a VCLM name, ``module.`` prefix) use the GPT-2 tokenizer of the matching size, loaded
from ``--tokenizer`` (a local folder) or the HF hub name in the registry row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lavila.models.checkpoint import config_from_checkpoint, load_checkpoint, load_state_dict_into
from lavila.models.registry import ModelConfig, build_from_config, config_to_dict
from lavila.models.tokenizers import HFGPT2Tokenizer, get_tokenizer


def hf_tokenizer_from_json(tokenizer_json: str, bos_token: str = "<|endoftext|>", eos_token: str | None = None) -> Any:
    """An HF fast tokenizer from a ``tokenizers`` JSON string (what :func:`save_narrator_checkpoint` stores)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token=bos_token,
                                   eos_token=eos_token or bos_token)


def narrator_tokenizer(cfg: ModelConfig, ckpt: dict[str, Any] | None = None,
                       tokenizer: str | os.PathLike | None = None, context_length: int = 77) -> HFGPT2Tokenizer:
    """The GPT-2-style tokenizer of a narrator, first found of: ``tokenizer`` (HF name, folder or ``.json``), the
    JSON embedded in the checkpoint, the ``tokenizer`` key of the training config stored in it, the registry's
    HF name (GPT-2 of the right size)."""
    ckpt = ckpt or {}
    source = tokenizer
    if source is None and ckpt.get("tokenizer_json"):
        hf = hf_tokenizer_from_json(ckpt["tokenizer_json"], ckpt.get("tokenizer_bos", "<|endoftext|>"))
        return HFGPT2Tokenizer(hf, context_length=context_length)
    if source is None and isinstance(ckpt.get("config"), dict) and ckpt["config"].get("tokenizer"):
        source = ckpt["config"]["tokenizer"]
    if source is not None and str(source).endswith(".json"):
        if not Path(source).is_file():
            raise FileNotFoundError(f"tokenizer file not found: {source} (pass --tokenizer)")
        return HFGPT2Tokenizer(hf_tokenizer_from_json(Path(source).read_text()), context_length=context_length)
    return get_tokenizer(cfg.name, pretrained=str(source or cfg.text.hf_name or "gpt2"),
                         context_length=context_length)


def load_narrator(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    tokenizer: str | os.PathLike | None = None,
    num_frames: int | None = None,
) -> tuple[nn.Module, HFGPT2Tokenizer, dict[str, Any]]:
    """Build the checkpoint's VCLM, load it strictly, put it in eval mode on ``device``; return (model, tok, ckpt)."""
    ckpt = load_checkpoint(path)
    overrides = {"num_frames": num_frames} if num_frames else {}
    cfg = config_from_checkpoint(ckpt, **overrides)
    if cfg.kind != "vclm":
        raise ValueError(f"{path}: {cfg.name} is a {cfg.kind}, not a narrator (VCLM) checkpoint")
    model = build_from_config(cfg)
    load_state_dict_into(model, ckpt["state_dict"], strict=True)
    model.eval().to(device)
    tok = narrator_tokenizer(cfg, ckpt, tokenizer)
    if tok.eos_token_id != model.eos_token_id or tok.bos_token_id != model.bos_token_id:
        raise ValueError(f"{path}: tokenizer BOS/EOS ({tok.bos_token_id}/{tok.eos_token_id}) differ from the model's "
                         f"({model.bos_token_id}/{model.eos_token_id}); pass the matching --tokenizer")
    return model, tok, ckpt


def save_narrator_checkpoint(path: str | os.PathLike, model: nn.Module, *, tokenizer_json: str | None = None,
                             **extra: Any) -> Path:
    """Write ``{state_dict, model_config, [tokenizer_json], **extra}`` atomically (loadable by ``load_narrator``)."""
    from lavila.atomic import atomic_save

    state = {"state_dict": model.state_dict(), "model_config": config_to_dict(model.config), **extra}
    if tokenizer_json is not None:
        state["tokenizer_json"] = tokenizer_json
    atomic_save(state, path)
    return Path(path)
