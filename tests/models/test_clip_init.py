"""Initialising from OpenAI CLIP: at step 0 the TimeSformer must equal frame-wise CLIP (spec 6.3)."""

from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel

from lavila.models import create_model
from lavila.models.clip_init import hf_clip_to_openai, init_from_openai_clip


def tiny_hf_clip(tmp_path, projection_dim=16):
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=12, eos_token_id=99, bos_token_id=98,
                         hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=projection_dim)
    hf = CLIPModel(cfg).eval()
    hf.save_pretrained(tmp_path / "clip")
    return hf, tmp_path / "clip"


def tiny_dual(embed_dim):
    return create_model("CLIP_OPENAI_TIMESFORMER_BASE", img_size=32, patch_size=8, vision_width=32, vision_layers=2,
                        vision_heads=4, text_width=32, text_layers=2, text_heads=4, text_vocab_size=100,
                        text_context_length=12, embed_dim=embed_dim).eval()


def test_timesformer_from_clip_equals_framewise_clip(tmp_path):
    hf, folder = tiny_hf_clip(tmp_path)
    model = tiny_dual(16)
    report = init_from_openai_clip(model, folder)
    assert report["projections"] == "copied from CLIP"
    assert all(any(s in k for s in ("temporal_embed", "timeattn", "norm3")) for k in report["visual_not_loaded"])
    image = torch.randn(2, 3, 32, 32)
    text = torch.randint(1, 98, (2, 12))
    text[0, 5], text[1, 11] = 99, 99
    with torch.no_grad():
        ref_img = hf.get_image_features(pixel_values=image)
        ref_txt = hf.get_text_features(input_ids=text)
        ours_img = model.encode_image(image.unsqueeze(2))  # one frame: the time branch is exactly zero
        ours_txt = model.encode_text(text)
    ref_img = getattr(ref_img, "pooler_output", ref_img)
    ref_txt = getattr(ref_txt, "pooler_output", ref_txt)
    # block LayerNorm eps is 1e-6 in the TimeSformer and 1e-5 in CLIP (reference behaviour), hence the tolerance
    torch.testing.assert_close(ours_img, ref_img, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(ours_txt, ref_txt, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.logit_scale, hf.logit_scale)


def test_other_projection_size_keeps_random_heads(tmp_path):
    hf, folder = tiny_hf_clip(tmp_path)
    model = tiny_dual(24)
    report = init_from_openai_clip(model, folder)
    assert report["projections"].startswith("random")
    torch.testing.assert_close(model.logit_scale.exp(), torch.tensor(1 / 0.07))
    sd = hf_clip_to_openai(hf.state_dict())
    torch.testing.assert_close(model.visual.pos_embed[0], sd["visual.positional_embedding"])
