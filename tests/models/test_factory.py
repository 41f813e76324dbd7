"""The factory: one way to build, load, convert and save every model kind, checked against the reference fixtures."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from lavila.conformance.clip import overrides_from_fixture_config
from lavila.models import create_model, create_model_and_transforms, from_pretrained, get_config, load_checkpoint
from lavila.models.checkpoint import CheckpointError, read_checkpoint
from lavila.models.config import config_to_dict
from lavila.models.convert import ConvertJob, convert
from lavila.models.tokenizers import SimpleTokenizer
from tests.conftest import reference_file

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, num_frames=4,
            text_width=32, text_layers=1, text_heads=2, embed_dim=16)


def _reference_pth(tmp_path, fixture: dict, model: str, **args) -> str:
    """A file in the released model-zoo format: DDP ``module.`` keys and the training script's ``args`` Namespace."""
    path = tmp_path / "reference.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in fixture["state_dict"].items()},
                "args": argparse.Namespace(model=model, **args), "epoch": 5, "best_acc1": 0.0}, path)
    return str(path)


def test_reference_checkpoint_converts_to_a_pickle_free_folder(tmp_path, monkeypatch):
    fx = torch.load(reference_file("clip_tiny_public.pt"), weights_only=False)
    sizes = overrides_from_fixture_config(fx["config"])
    src = _reference_pth(tmp_path, fx, "CLIP_OPENAI_TIMESFORMER_BASE", project_embed_dim=sizes["embed_dim"],
                         clip_length=sizes["num_frames"], norm_embed=False)
    # the generator's tiny text tower has 1000 ids: the real CLIP BPE does not fit it, so none is stored
    out = convert(ConvertJob(src, str(tmp_path / "out")),
                  **{k: v for k, v in sizes.items() if k not in ("embed_dim", "num_frames")})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["model_config"]["name"] == "CLIP_OPENAI_TIMESFORMER_BASE"
    assert meta["model_config"]["vision"]["num_frames"] == fx["config"]["frames"]
    assert meta["model_config"]["preprocess"]["mean"][0] == pytest.approx(0.48145466 * 225)
    assert meta["source_args"]["project_embed_dim"] == sizes["embed_dim"] and meta["epoch"] == 5

    def no_pickle(*a, **k):
        raise AssertionError("a converted folder must load without torch.load (no unpickling)")

    monkeypatch.setattr(torch, "load", no_pickle)
    model = from_pretrained(out).eval()
    with torch.no_grad():  # the converted model still computes the reference's embeddings
        assert torch.allclose(model.encode_image(fx["video_BCTHW"].float()), fx["image_embed"], atol=1e-5)
        assert torch.allclose(model.encode_text(fx["text"]), fx["text_embed"], atol=1e-5)


def test_convert_stores_the_tokenizer_and_verbs_find_it(tmp_path):
    from lavila.models import tokenizer_for

    bpe = reference_file("bpe_simple_vocab_16e6.txt.gz")
    model = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **TINY)
    path = tmp_path / "ours.pt"
    torch.save({"state_dict": model.state_dict(), "model_config": __import__("dataclasses").asdict(model.config)},
               path)
    out = convert(ConvertJob(str(path), str(tmp_path / "out"), tokenizer=str(bpe)))
    assert (out / "bpe_simple_vocab_16e6.txt.gz").read_bytes() == bpe.read_bytes()
    tok = tokenizer_for(create_model(out))  # found beside the weights: no --tokenizer, no environment variable
    assert isinstance(tok, SimpleTokenizer)
    assert tok("#C C opens the fridge").tolist() == SimpleTokenizer(bpe)("#C C opens the fridge").tolist()


def test_distilbert_reference_checkpoint_converts(tmp_path):
    fx = torch.load(reference_file("clip_distilbert_tiny_public.pt"), weights_only=False)
    model = create_model("CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", text_hf_config=fx["distilbert_config"],
                         **{k: v for k, v in overrides_from_fixture_config(fx["config"]).items()
                            if not k.startswith("text_")})
    model.load_state_dict(fx["state_dict"])
    folder = model.save_pretrained(tmp_path / "db")
    again = type(model).from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    as_json = lambda cfg: json.loads(json.dumps(config_to_dict(cfg), default=str))  # noqa: E731 - HF int keys
    assert as_json(again.config) == as_json(model.config)


def test_save_pretrained_round_trips_a_narrator_with_its_tokenizer(tmp_path):
    from lavila.models import tokenizer_for
    from lavila.models.tokenizers import HFGPT2Tokenizer
    from lavila.narrate.tiny import create_tiny_narrator

    model, hf_tok = create_tiny_narrator()
    tok = HFGPT2Tokenizer(hf_tok)
    folder = model.save_pretrained(tmp_path / "narrator", tok)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    loaded = create_model(folder, kind="vclm")
    assert torch.equal(loaded.text_decoder.lm_head.weight, model.text_decoder.lm_head.weight)
    assert loaded.text_decoder.lm_head.weight.data_ptr() == loaded.text_decoder.transformer.wte.weight.data_ptr()
    back = tokenizer_for(loaded)
    text = "#C C opens the fridge door"
    assert torch.equal(back(text), tok(text))


def test_classifier_is_a_factory_kind(tmp_path):
    from lavila.models.classifier import build_classifier

    backbone = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **TINY)
    clf = build_classifier(backbone.visual, [3, 5], dropout=0.0, config=backbone.config)
    assert clf.config.kind == "classifier" and clf.config.num_classes == (3, 5)
    again = create_model(clf.save_pretrained(tmp_path / "clf"))
    assert type(again) is type(clf) and again.num_classes == [3, 5]
    # a reference fine-tuning file (args without the backbone name) needs --model; its heads are found
    path = tmp_path / "ft.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clf.state_dict().items()},
                "args": argparse.Namespace(dropout_rate=0.5)}, path)
    with pytest.raises(CheckpointError, match="--model"):
        create_model(path, **TINY)
    ref = create_model(path, arch="CLIP_OPENAI_TIMESFORMER_BASE", **TINY)
    assert ref.config.kind == "classifier" and ref.num_classes == [3, 5]


def test_wrong_kind_is_refused_before_building(tmp_path):
    folder = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **TINY).save_pretrained(tmp_path / "de")
    with pytest.raises(CheckpointError, match=r"holds a dual encoder .* this needs a narrator"):
        create_model(folder, kind="vclm")


def test_create_model_and_transforms_use_the_row(tmp_path):
    model, train_tf, eval_tf = create_model_and_transforms("CLIP_HF_TIMESFORMER_DISTILBERT_BASE",
                                                           **{**TINY, "text_hf_config": {
                                                               "vocab_size": 50, "dim": 32, "n_layers": 1,
                                                               "n_heads": 2, "hidden_dim": 64}})
    frames = torch.randint(0, 256, (4, 40, 48, 3), dtype=torch.uint8)
    x = eval_tf(frames)
    assert x.shape == (3, 4, 32, 32) and x.dtype == torch.float32
    row = get_config("CLIP_HF_TIMESFORMER_DISTILBERT_BASE")
    # ImageNet statistics for this row: a mid-grey frame maps to (128 - mean) / std
    grey = eval_tf(torch.full((4, 32, 32, 3), 128, dtype=torch.uint8))
    mean, std = torch.tensor(row.preprocess.mean), torch.tensor(row.preprocess.std)
    assert torch.allclose(grey[:, 0, 0, 0], (128 - mean) / std)
    assert train_tf(frames).shape == (3, 4, 32, 32)
    with torch.no_grad():
        assert model.encode_image(x[None]).shape == (1, 16)


def test_load_checkpoint_and_untrusted_pickles(tmp_path):
    model = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **TINY)
    path = tmp_path / "ours.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, path)
    fresh = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **TINY)
    assert load_checkpoint(fresh, path)["epoch"] == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": model.state_dict(), "extra": Payload()}, bad)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        read_checkpoint(bad)
