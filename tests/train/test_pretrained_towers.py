"""Every pretrained tower is loaded through the training tasks (the factory), not only through ``create_model``.

Before the factory, ``lavila train`` with ``pretrained: true`` on a ``*_DISTILBERT_BASE`` model trained from a
*random* DistilBERT: the task built the model itself and only copied CLIP weights. Spies on the loaders prove each
pretrained source is used by the task's ``build_model``: OpenAI CLIP (visual + CLIP text), DistilBERT, GPT-2.
"""

from __future__ import annotations

from typing import Any

import pytest

from lavila.train.recipe import build_config
from lavila.train.tasks import make_task
from tests.train.helpers import TINY_MODEL, tiny_values

TINY_DISTILBERT = {"vocab_size": 64, "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64,
                   "max_position_embeddings": 80}


@pytest.fixture
def clip_spy(monkeypatch) -> list[tuple[str, Any]]:
    """Record calls of the OpenAI CLIP initialisation the factory performs (no weights are downloaded)."""
    import lavila.models.clip_init as clip_init

    calls: list[tuple[str, Any]] = []

    def fake_init(model, source=None):
        calls.append((model.config.name, source))
        return {"source": str(source), "projections": "random"}

    monkeypatch.setattr(clip_init, "init_from_openai_clip", fake_init)
    return calls


def test_dual_encoder_task_loads_clip_and_pretrained_distilbert(tmp_path, monkeypatch, clip_spy):
    from transformers import DistilBertConfig, DistilBertModel

    loaded: list[str] = []

    def fake_from_pretrained(name, *args, **kwargs):
        loaded.append(str(name))
        return DistilBertModel(DistilBertConfig(**TINY_DISTILBERT))

    monkeypatch.setattr(DistilBertModel, "from_pretrained", fake_from_pretrained)
    overrides = {k: v for k, v in TINY_MODEL.items() if not k.startswith("text_")}
    cfg = build_config(tiny_values(tmp_path, model="CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", pretrained=True,
                                   clip_weights="my_clip.pt",
                                   model_overrides={**overrides, "text_hf_config": TINY_DISTILBERT}))
    model = make_task(cfg).build_model()
    assert loaded == ["distilbert-base-uncased"]  # the row's pretrained DistilBERT, through the task
    assert clip_spy == [("CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", "my_clip.pt")]
    assert model.textual.config.dim == 32


def test_dual_encoder_task_loads_clip_visual_and_text(tmp_path, clip_spy):
    cfg = build_config(tiny_values(tmp_path, pretrained=True))
    make_task(cfg).build_model()
    assert clip_spy == [("CLIP_OPENAI_TIMESFORMER_BASE", None)]  # None = the row's HF CLIP (visual + text tower)


def test_pretrained_false_loads_nothing(tmp_path, clip_spy):
    make_task(build_config(tiny_values(tmp_path, pretrained=False))).build_model()
    assert clip_spy == []


def test_narrator_task_loads_pretrained_gpt2(tmp_path, media_dir, monkeypatch):
    from lavila.models.gpt2_gated import GatedGPT2LMHeadModel
    from lavila.narrate.tiny import build_tiny_tokenizer, tiny_narrator_config

    sources: list[str] = []
    monkeypatch.setattr(GatedGPT2LMHeadModel, "load_pretrained_lm",
                        lambda self, name: sources.append(str(name)) or [])
    tok = build_tiny_tokenizer()
    (tmp_path / "tok.json").write_text(tok.backend_tokenizer.to_str())
    row = tiny_narrator_config(len(tok))
    overrides = {"img_size": 32, "patch_size": 8, "vision_width": row.vision.width, "vision_layers": 1,
                 "vision_heads": 2, "text_width": 32, "text_layers": 2, "text_heads": 2,
                 "text_vocab_size": len(tok), "text_hf_config": dict(row.text.hf_config), "num_img_queries": 8,
                 "pooler_dim_head": 16, "pooler_heads": 2, "tokenizer_name": None,
                 "tokenizer_vocab_size": len(tok), "tokenizer_bos_id": len(tok) - 1, "tokenizer_eos_id": len(tok) - 1}
    cfg = build_config({"model": "VCLM_OPENAI_TIMESFORMER_BASE_GPT2", "model_overrides": overrides,
                        "root": str(media_dir), "metadata": str(tmp_path / "train.pkl"), "gpt2_weights": "my_gpt2",
                        "tokenizer": str(tmp_path / "tok.json"), "output_dir": str(tmp_path / "out"),
                        "device": "cpu", "workers": 0})
    make_task(cfg).build_model()
    assert sources == ["my_gpt2"]
    random_init = build_config({**cfg.to_dict(), "random_init_gpt2": True})
    sources.clear()
    make_task(random_init).build_model()
    assert sources == []  # --random-init-gpt2 skips the copy, as in the reference
