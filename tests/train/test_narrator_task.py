"""The narrator training task through the shared loop: tiny model on the shared clips, stage-1 initialisation."""

from __future__ import annotations

import pickle

import torch

from lavila.narrate.tiny import build_tiny_tokenizer, tiny_narrator_config
from lavila.train.recipe import load_config
from lavila.train.tasks.narrator import NarratorTask

CLIPS = [
    ("3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014", 0.0, 1.0, "#C C stirs the food in the pan with a spatula"),
    ("mixkit-hands-of-a-baker-kneading-a-dough-42467-medium", 1.0, 2.0, "#O a baker kneads the dough on the table"),
    ("mixkit-chef-preparing-a-sauce-in-a-blender-43034-medium", 0.0, 1.0, "#O a chef pours the sauce into a blender"),
    ("mixkit-pastry-chef-cutting-a-loaf-into-slices-43015-medium", 2.0, 3.0, "#O a pastry chef cuts the loaf"),
]


def _config(tmp_path, media_dir, **extra):
    tok = build_tiny_tokenizer()
    (tmp_path / "tok.json").write_text(tok.backend_tokenizer.to_str())
    (tmp_path / "clips_train.pkl").write_bytes(pickle.dumps(CLIPS))
    cfg = tiny_narrator_config(len(tok))
    overrides = {"img_size": 32, "patch_size": 8, "vision_width": cfg.vision.width, "vision_layers": 1,
                 "vision_heads": 2, "text_width": 32, "text_layers": 2, "text_heads": 2,
                 "text_vocab_size": len(tok), "text_hf_config": dict(cfg.text.hf_config), "text_hf_name": None,
                 "num_img_queries": 8, "pooler_dim_head": 16, "pooler_heads": 2,
                 # the row describes its tokenizer: this tiny BPE, BOS = EOS = its last id
                 "tokenizer_name": None, "tokenizer_vocab_size": len(tok), "tokenizer_bos_id": len(tok) - 1,
                 "tokenizer_eos_id": len(tok) - 1}
    base = {"model": "VCLM_OPENAI_TIMESFORMER_BASE_GPT2", "model_overrides": overrides, "root": str(media_dir),
            "metadata": str(tmp_path / "clips_train.pkl"), "output_dir": str(tmp_path / "out"),
            "tokenizer": str(tmp_path / "tok.json"), "video_chunk_len": -1, "video_fps": -1,
            "random_init_gpt2": True, "batch_size": 2, "epochs": 1, "fix_lr": True, "lr": 1e-3, "workers": 0,
            "disable_amp": True, "clip_grad_value": 1.0, "device": "cpu", "plot": False, "progress": False, **extra}
    return load_config(None, defaults=base)


def test_vclm_models_default_to_the_narrator_task(tmp_path, media_dir) -> None:
    cfg = _config(tmp_path, media_dir)
    assert cfg.task == "narrator" and cfg.freeze_lm_vclm and cfg.gated_xattn


def test_train_two_steps_then_narrate_with_the_checkpoint(tmp_path, media_dir) -> None:
    from lavila.narrate.generate import GenerationConfig
    from lavila.narrate.loading import load_narrator
    from lavila.narrate.narrate import narrate_batch
    from lavila.train.loop import train

    cfg = _config(tmp_path, media_dir, freeze_lm_vclm=False)
    result = train(cfg)
    assert result.global_step == 2
    model, tok, _ = load_narrator(tmp_path / "out" / "checkpoint.pt")
    (texts, scores), = narrate_batch(model, tok, torch.randn(1, 3, 4, 32, 32), GenerationConfig(
        num_return_sequences=2, max_len=8))
    assert len(texts) == 2 and len(scores) == 2


def test_resume_from_a_dual_encoder_loads_only_its_visual_tower(tmp_path, media_dir) -> None:
    from lavila.models import build_model
    from lavila.train.loop import train

    cfg = _config(tmp_path, media_dir)
    # a stage-1 dual-encoder checkpoint: DDP prefix, a visual tower, text keys the narrator lacks, and training state
    torch.manual_seed(123)
    donor = build_model(NarratorTask(cfg).model_config())
    sd = {f"module.{k}": v for k, v in donor.state_dict().items() if k.startswith("visual.")}
    sd.update({"module.image_projection": torch.randn(32, 8), "module.logit_scale": torch.tensor(2.0)})
    stage1 = tmp_path / "dual_encoder.pt"
    torch.save({"state_dict": sd, "epoch": 3, "best_acc1": 0.5, "optimizer": {"state": {}, "param_groups": []},
                "scaler": {}}, stage1)
    cfg = _config(tmp_path, media_dir, resume=str(stage1), stop_after_steps=1)
    result = train(cfg)
    assert result.global_step == 1 and result.epochs_done == 0  # not mistaken for "3 epochs done"
    ckpt = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    for k, v in donor.state_dict().items():
        if k.startswith("visual."):  # frozen tower: still exactly the donor's weights
            assert torch.equal(ckpt["state_dict"][f"module.{k}"], v), k
