"""Tiny random narrators with a tiny byte-level BPE tokenizer, for tests and demos that must not download GPT-2.

``python -m lavila.narrate.tiny OUT.pt`` writes a self-contained checkpoint (model config, weights and the
tokenizer as JSON) that ``lavila narrate --checkpoint OUT.pt`` loads like a real one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lavila.models import ModelConfig, build_model, get_config

EOT = "<|endoftext|>"

# Ego4D-style narrations ("#C" = camera wearer, "#O" = someone else) used to train the tiny tokenizer.
TINY_NARRATIONS = [
    "#C C stirs the food in the pan with a spatula",
    "#C C flips the pancake in the frying pan",
    "#O a chef pours the sauce into a blender",
    "#O a baker kneads the dough on the table",
    "#O a pastry chef cuts the loaf into slices with a knife",
    "#O workers move a large mirror in a dark hall",
    "#C C picks a knife from the table",
    "#C C opens the fridge door",
    "#C C washes the plate in the sink",
    "#C C looks around the kitchen",
]


def build_tiny_tokenizer(texts: Iterable[str] = TINY_NARRATIONS, vocab_size: int = 320) -> Any:
    """GPT-2-like byte-level BPE trained on ``texts``: id 0 is ``!`` (the pad id), ``<|endoftext|>`` is the last id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    tok.add_special_tokens([EOT])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT)


def tiny_narrator_config(vocab_size: int, *, num_frames: int = 4, img_size: int = 32, patch_size: int = 8,
                         width: int = 32, depth: int = 1, heads: int = 2, text_width: int = 32, text_layers: int = 2,
                         text_heads: int = 2, num_queries: int = 8, n_positions: int = 80,
                         cross_attn_freq: int = 1) -> ModelConfig:
    """A VCLM registry row shrunk to test size (BOS = EOS = the last id, as GPT-2)."""
    hf = {"vocab_size": vocab_size, "n_positions": n_positions, "n_embd": text_width, "n_layer": text_layers,
          "n_head": text_heads, "bos_token_id": vocab_size - 1, "eos_token_id": vocab_size - 1}
    return get_config(
        "VCLM_OPENAI_TIMESFORMER_BASE_GPT2", img_size=img_size, patch_size=patch_size, vision_width=width,
        vision_layers=depth, vision_heads=heads, num_frames=num_frames, text_width=text_width,
        text_layers=text_layers, text_heads=text_heads, text_vocab_size=vocab_size, text_hf_config=hf,
        text_hf_name=None, tokenizer_name=None, tokenizer_vocab_size=vocab_size, tokenizer_bos_id=vocab_size - 1,
        tokenizer_eos_id=vocab_size - 1, num_img_queries=num_queries, pooler_dim_head=text_width // text_heads,
        pooler_heads=text_heads, cross_attn_freq=cross_attn_freq,
    )


def randomize_gates(model: torch.nn.Module, value: float = 1.0) -> None:
    """Open the tanh gates (init 0) so a random model's captions actually depend on the video."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha_cattn", "alpha_dense")):
                p.fill_(value)


def create_tiny_narrator(seed: int = 0, texts: Iterable[str] = TINY_NARRATIONS, **config: Any):
    """(model, hf_tokenizer) of a tiny random narrator whose vocabulary is a BPE trained on ``texts``."""
    hf_tok = build_tiny_tokenizer(texts)
    torch.manual_seed(seed)
    model = build_model(tiny_narrator_config(len(hf_tok), **config))
    randomize_gates(model)
    return model.eval(), hf_tok


def create_tiny_narrator_checkpoint(path: str | os.PathLike, seed: int = 0, **config: Any) -> Path:
    """Write a tiny random narrator checkpoint (weights, config, tokenizer) to ``path``.

    It records ``random_weights: True``, so ``lavila narrate`` warns that its captions are nonsense.
    """
    from lavila.narrate.loading import save_narrator_checkpoint

    model, hf_tok = create_tiny_narrator(seed, **config)
    return save_narrator_checkpoint(path, model, tokenizer_json=hf_tok.backend_tokenizer.to_str(),
                                    tokenizer_bos=EOT, random_weights=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="checkpoint file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=4)
    args = parser.parse_args(argv)
    print(create_tiny_narrator_checkpoint(args.output, seed=args.seed, num_frames=args.num_frames))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
