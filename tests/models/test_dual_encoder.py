"""Dual encoder: numerical conformance with the reference, checkpoint compatibility, attention paths."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from lavila.conformance import run_checks
from lavila.models import MODEL_CONFIGS, create_model, get_config
from lavila.models.checkpoint import CheckpointMismatchError, load_state_dict_into, manifest_diff
from tests.conftest import reference_file

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4, num_frames=4,
            text_width=32, text_layers=2, text_heads=4, text_vocab_size=100, text_context_length=12, embed_dim=16)


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("CLIP_OPENAI_TIMESFORMER_BASE", **{**TINY, **kw})


def randomize_time_attention(model):
    """The reference init makes the time branch output 0; perturb it so tests exercise that path."""
    with torch.no_grad():
        for block in model.visual.blocks:
            block.timeattn.qkv.weight.normal_(0, 0.05)
            block.timeattn.proj.weight.normal_(0, 0.05)
        model.visual.temporal_embed.normal_(0, 0.05)


@pytest.mark.parametrize("name", ["clip_tiny_public.pt", "clip_distilbert_tiny_public.pt", "inflate_public.pt"])
def test_conformance_public_fixture(name):
    results = run_checks([reference_file(name)])
    assert results, "no checks ran"
    bad = [r for r in results if not r.ok]
    assert not bad, bad
    assert all(r.max_abs_err <= 1e-5 for r in results)


@pytest.mark.parametrize("name", [n for n, c in MODEL_CONFIGS.items() if c.kind == "dual_encoder"
                                  and "_HF_" not in n])
def test_full_size_models_match_reference_manifest(name):
    manifest = json.loads(reference_file("reference_state_dict_manifest.json").read_text())
    with torch.device("meta"):
        model = create_model(name)
    assert manifest_diff(model, manifest[name]) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_and_explicit_attention_agree(dtype):
    """Forward and gradients of the two kernels agree (fp32, and bf16 autocast as `--precision bf16` runs)."""
    video, text = torch.randn(2, 3, 4, 32, 32), torch.randint(1, 99, (2, 12))
    outs, grads = [], []
    for impl in ("sdpa", "math"):
        model = tiny()
        randomize_time_attention(model)
        model.visual.set_attention_impl(impl)
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(video, text)
        outs.append(out["image_embed"].float())
        (out["image_embed"].float() @ out["text_embed"].float().T).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.visual.parameters() if p.grad is not None]))
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(outs[0], outs[1], **tol)
    torch.testing.assert_close(grads[0], grads[1], **tol)


def test_cpu_attention_rule():
    """`auto` on CPU: the explicit product for bf16 and for short fp32 sequences without autograd, else SDPA."""
    from lavila.models.timesformer import CPU_SDPA_MIN_KEYS, cpu_attention_impl

    short, long = CPU_SDPA_MIN_KEYS - 1, CPU_SDPA_MIN_KEYS

    def qk(keys, dtype=torch.float32, grad=False):
        return torch.zeros(2, 4, 3, 8, dtype=dtype, requires_grad=grad), torch.zeros(2, 4, keys, 8, dtype=dtype)

    assert cpu_attention_impl(*qk(long, torch.bfloat16)) == "math"
    assert cpu_attention_impl(*qk(short, torch.bfloat16, grad=True)) == "math"
    with torch.no_grad():
        assert cpu_attention_impl(*qk(short)) == "math"
        assert cpu_attention_impl(*qk(long)) == "sdpa"
    assert cpu_attention_impl(*qk(short, grad=True)) == "sdpa"
    assert cpu_attention_impl(*qk(short, grad=False)) == "math"  # grad mode on, but nothing to differentiate


def test_gradient_checkpointing_gives_same_gradients():
    video, text = torch.randn(2, 3, 4, 32, 32), torch.randint(1, 99, (2, 12))
    grads = []
    for ckpt in (False, True):
        model = tiny()
        randomize_time_attention(model)
        model.set_grad_checkpointing(ckpt)
        out = model(video, text)
        (out["image_embed"] @ out["text_embed"].T).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_fewer_frames_accepted_more_frames_rejected():
    model = tiny().eval()
    with torch.no_grad():
        assert model.encode_image(torch.randn(1, 3, 2, 32, 32)).shape == (1, 16)
    with pytest.raises(ValueError, match="at most 4"):
        model.encode_image(torch.randn(1, 3, 8, 32, 32))


def test_norm_embed_normalises_and_logit_scale_freezes():
    model = tiny(norm_embed=True)
    out = model(torch.randn(2, 3, 4, 32, 32), torch.randint(1, 99, (2, 12)))
    torch.testing.assert_close(out["image_embed"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out["logit_scale"], torch.tensor(1 / 0.07))
    model.freeze_temperature()
    assert not model.logit_scale.requires_grad


def test_module_prefix_stripped_and_temporal_embedding_inflated():
    src = tiny()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst = tiny(num_frames=8)
    load_state_dict_into(dst, sd)
    te = src.visual.temporal_embed.detach()
    expected = torch.nn.functional.interpolate(te.unsqueeze(0), (8, te.shape[2]), mode="bilinear").squeeze(0)
    torch.testing.assert_close(dst.visual.temporal_embed.detach(), expected)
    torch.testing.assert_close(dst.visual.cls_token, src.visual.cls_token)


def test_resolution_change_is_refused_unless_interpolation_requested():
    src, dst = tiny(), tiny(img_size=48)
    with pytest.raises(CheckpointMismatchError, match="visual.pos_embed"):
        load_state_dict_into(dst, src.state_dict())
    load_state_dict_into(dst, src.state_dict(), interpolate_pos=True)
    assert dst.visual.pos_embed.shape == (1, 37, 32)
    torch.testing.assert_close(dst.visual.pos_embed[:, 0], src.visual.pos_embed[:, 0])


def test_mismatch_is_reported_by_key():
    sd = tiny().state_dict()
    sd["bogus.weight"] = torch.zeros(1)
    del sd["ln_final.bias"]
    sd["text_projection"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_into(tiny(), sd)
    msg = str(err.value)
    assert "bogus.weight" in msg and "ln_final.bias" in msg and "text_projection" in msg


def test_reference_style_checkpoint_builds_the_right_model(tmp_path):
    src = tiny(num_frames=4)
    args = argparse.Namespace(model="CLIP_OPENAI_TIMESFORMER_BASE", project_embed_dim=16, clip_length=4,
                              norm_embed=True)
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "args": args,
                "epoch": 3, "best_acc1": 0.0}, path)
    # the tiny sizes are not in the reference args, so pass them as overrides, as a user would for frames
    sizes = {k: v for k, v in TINY.items() if k not in ("embed_dim", "num_frames")}
    model = create_model(path, **sizes, num_frames=8)
    ckpt = model.checkpoint_meta
    assert ckpt["epoch"] == 3 and model.config.vision.num_frames == 8 and model.norm_embed


def test_unknown_override_names_the_key():
    with pytest.raises(TypeError, match="vision_widht"):
        get_config("CLIP_OPENAI_TIMESFORMER_BASE", vision_widht=3)
    with pytest.raises(KeyError, match="NOPE"):
        get_config("NOPE")


def test_models_command_lists_registry(capsys):
    from lavila.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in MODEL_CONFIGS:
        assert name in out
