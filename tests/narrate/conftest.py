"""Tiny random narrator / paraphraser fixtures (no download): built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_narrator():
    """(VCLM in eval mode, HF tokenizer) with 8 queries, 2 decoder layers and the tanh gates opened."""
    from lavila.narrate.tiny import create_tiny_narrator

    return create_tiny_narrator(seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from lavila.narrate.tiny import create_tiny_narrator_checkpoint

    return create_tiny_narrator_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_vclm.pt", seed=0)


def make_tiny_t5(folder: Path) -> Path:
    """A 1-layer random T5 and a word-level tokenizer that appends </s>, saved like a hub model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = "paraphrase : # c o a the man woman cuts stirs bread pot knife picks up with in on".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    cfg = T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                   num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    hf.save_pretrained(folder)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return make_tiny_t5(tmp_path_factory.mktemp("t5"))
