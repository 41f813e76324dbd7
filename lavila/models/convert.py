"""``lavila convert CHECKPOINT OUT_DIR``: any checkpoint -> a pickle-free ``save_pretrained`` folder.

The released model-zoo files are pickles with an ``argparse.Namespace`` inside; ours are pickles too. A converted
folder (``config.json`` + ``model.safetensors`` + tokenizer files) records the model's row -- name, frames,
preprocessing, tokenizer -- so every verb and :func:`lavila.models.from_pretrained` load it without unpickling and
without ``--trust-checkpoint``, and it is safe to hand to someone else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tyro.conf import Positional

from lavila.config import option
from lavila.models.factory import create_model, tokenizer_for
from lavila.models.pretrained import save_pretrained
from lavila.models.tokenizers import TokenizerError


@dataclass
class ConvertJob:
    """Convert a checkpoint (a released reference ``.pth``, ours, or a folder) to a safetensors folder."""

    checkpoint: Positional[str] = option(help="checkpoint file (.pth/.pt) or pretrained folder to convert")
    out_dir: Positional[str] = option(help="folder to write config.json + model.safetensors (+ tokenizer files)")
    model: str = option("", "registry name, for reference fine-tuning checkpoints whose args do not name the "
                        "backbone")
    num_frames: int = option(0, "rebuild for this many frames (temporal embedding inflated/cut); 0 = the "
                             "checkpoint's", min=0)
    tokenizer: str = option("", "tokenizer files to store beside the weights (folder or file); default: the "
                            "row's, when found")
    trust_checkpoint: bool = option(False, "allow unpickling arbitrary objects (only for a file you trust); "
                                    "released files do not need it")


def _json_safe(value: Any) -> Any:
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def convert(job: ConvertJob, **overrides: Any) -> Path:
    """Build the checkpoint's model through the factory, load it strictly, write the folder; returns the folder.

    ``overrides`` (Python only) are row fields the checkpoint does not record, e.g. the sizes of a tiny test model.
    """
    if job.num_frames:
        overrides["num_frames"] = job.num_frames
    model = create_model(job.checkpoint, arch=job.model or None, trust_checkpoint=job.trust_checkpoint, **overrides)
    try:
        tokenizer = tokenizer_for(model, job.tokenizer or None)
    except TokenizerError as err:
        if job.tokenizer:
            raise
        tokenizer = None
        print(f"note: tokenizer files not stored ({err}); verbs will look for them as for a registry model")
    meta = model.checkpoint_meta if hasattr(model, "checkpoint_meta") else {}
    extra = {"converted_from": str(Path(job.checkpoint).resolve())}
    for key in ("epoch", "best_acc1", "args"):
        if key in meta:
            extra[key if key != "args" else "source_args"] = _json_safe(meta[key])
    out = save_pretrained(model, job.out_dir, tokenizer, **extra)
    cfg = model.config
    print(f"converted {job.checkpoint} ({cfg.name}, {cfg.kind}, {cfg.vision.num_frames} frames, "
          f"{cfg.vision.img_size} px) -> {out}")
    return out


def run_convert(job: ConvertJob) -> int:
    """``lavila convert``: expected failures become one line through the CLI's error handling."""
    from lavila.errors import LavilaError
    from lavila.models.checkpoint import CheckpointError, CheckpointMismatchError

    try:
        convert(job)
    except (CheckpointError, CheckpointMismatchError, TokenizerError, FileNotFoundError) as err:
        raise LavilaError("; ".join(line.strip() for line in str(err).splitlines())) from err
    return 0
