"""VCLM narrator: reference key layout (manifest), freeze flags, pooler math, gating, conformance fixture."""

from __future__ import annotations

import json

import pytest
import torch

from lavila.models import MODEL_CONFIGS, build_model, get_config
from tests.conftest import reference_file

VCLM_NAMES = [name for name, cfg in MODEL_CONFIGS.items() if cfg.kind == "vclm"]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(reference_file("reference_state_dict_manifest.json").read_text())


@pytest.mark.parametrize("name", VCLM_NAMES)
def test_full_size_vclm_matches_reference_manifest(name: str, manifest: dict) -> None:
    if name not in manifest:
        pytest.skip(f"{name} has no manifest entry")
    entry = manifest[name]
    with torch.device("meta"):
        model = build_model(get_config(name, num_frames=4), freeze_lm=True, freeze_visual=True,
                                  freeze_visual_temporal=True)
    own = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    ref = {k: (shape, dtype) for k, shape, dtype in entry["state_dict"]}
    assert sorted(set(own) - set(ref)) == []
    assert sorted(set(ref) - set(own)) == []
    assert {k: v for k, v in own.items() if v != ref[k]} == {}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == entry["trainable"]


def test_conformance_fixture_passes() -> None:
    from lavila.conformance.vclm import check_vclm

    checks = check_vclm(reference_file("vclm_tiny_public.pt"))
    failed = [c for c in checks if not c.ok]
    assert len(checks) >= 10 and failed == []


def _tiny(freq: int = 1, gated: bool = True, text_layers: int = 2, **build_kwargs):
    from dataclasses import replace

    from lavila.narrate.tiny import tiny_narrator_config

    cfg = tiny_narrator_config(50, text_layers=text_layers, cross_attn_freq=freq)
    return build_model(replace(cfg, gated_xattn=gated), **build_kwargs).eval()


def test_cross_attention_layers_follow_frequency() -> None:
    model = _tiny(freq=3, text_layers=7)
    with_xattn = [i for i, b in enumerate(model.text_decoder.transformer.h) if hasattr(b, "crossattention")]
    assert with_xattn == [0, 3, 6]
    assert not hasattr(_tiny(gated=False).text_decoder.transformer.h[0], "alpha_cattn")


def test_legacy_buffers_and_tied_head() -> None:
    model = _tiny()
    block = model.text_decoder.transformer.h[0]
    n = model.text_decoder.config.n_positions
    for attn in (block.attn, block.crossattention):
        assert attn.bias.dtype == torch.uint8 and attn.bias.shape == (1, 1, n, n)
        assert torch.equal(attn.bias[0, 0], torch.tril(torch.ones(n, n, dtype=torch.uint8)))
        assert attn.masked_bias.item() == -1e4
    assert model.text_decoder.lm_head.weight is model.text_decoder.transformer.wte.weight


def test_pooler_is_multi_query_attention_without_residual() -> None:
    torch.manual_seed(0)
    model = _tiny()
    pool = model.img_attn_pool
    with torch.no_grad():
        pool.norm.gamma.normal_()
        pool.context_norm.gamma.normal_()
    queries, context = torch.randn(2, 8, 32), torch.randn(2, 11, 32)
    # Independent CoCa formulation: every head's query against ONE shared key/value head, softmax(q k / sqrt(d)).
    x = torch.nn.functional.layer_norm(queries, (32,), pool.norm.gamma, None, 1e-5)
    c = torch.nn.functional.layer_norm(context, (32,), pool.context_norm.gamma, None, 1e-5)
    q = (x @ pool.to_q.weight.T).view(2, 8, pool.heads, pool.dim_head).transpose(1, 2) * pool.dim_head**-0.5
    k, v = (c @ pool.to_kv.weight.T).chunk(2, dim=-1)
    sim = torch.einsum("bhid,bjd->bhij", q, k)
    attn = (sim - sim.amax(-1, keepdim=True)).softmax(-1)
    out = torch.einsum("bhij,bjd->bhid", attn, v).transpose(1, 2).reshape(2, 8, -1) @ pool.to_out.weight.T
    with torch.no_grad():
        assert torch.allclose(pool(queries, context), out, atol=1e-5)


def test_closed_gates_ignore_the_video_and_open_gates_do_not() -> None:
    model = _tiny()  # gates init 0: tanh(0) = 0, the decoder is plain GPT-2
    ids = torch.tensor([[49, 5, 7, 9]])
    a, b = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    with torch.no_grad():
        assert torch.equal(model.decode(ids, a), model.decode(ids, b))
        for block in model.text_decoder.transformer.h:
            block.alpha_cattn.fill_(0.5)
            block.alpha_dense.fill_(0.5)
        assert not torch.allclose(model.decode(ids, a), model.decode(ids, b))


def test_freeze_flags_leave_pooler_and_cross_attention_trainable() -> None:
    model = _tiny(freeze_lm=True, freeze_visual=True, freeze_visual_temporal=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("visual.") for n in trainable)
    assert {"img_queries", "img_attn_pool.to_q.weight", "img_attn_pool_norm.gamma"} <= trainable
    decoder = {n for n in trainable if n.startswith("text_decoder.")}
    assert decoder and all(any(p in n for p in ("crossattention", "cross_attn", "alpha_")) for n in decoder)
    # Only the spatial part frozen: the temporal parts (timeattn, norm3, temporal_embed) stay trainable.
    spatial_only = _tiny(freeze_visual=True)
    names = {n for n, p in spatial_only.named_parameters() if p.requires_grad and n.startswith("visual.")}
    assert names and all(("timeattn" in n or "norm3" in n or "temporal_embed" in n) for n in names)


def test_forward_shapes_and_labels() -> None:
    model = _tiny()
    video = torch.randn(2, 3, 4, 32, 32)
    ids = torch.randint(1, 49, (2, 9))
    with torch.no_grad():
        out = model(video, ids)
    assert out["text_tokens_logits"].shape == (2, 50, 8)
    assert torch.equal(out["labels"], ids[:, 1:])


def test_sequences_of_a_clip_share_its_visual_keys_and_values() -> None:
    model = _tiny()
    with torch.no_grad():
        for block in model.text_decoder.transformer.h:
            block.alpha_cattn.fill_(0.5)
        tokens = torch.randn(2, 8, 32)  # 2 clips
        ids = torch.randint(1, 49, (6, 5))  # 3 sequences per clip, clip-major
        shared = model.decode(ids, tokens)
        repeated = model.decode(ids, tokens.repeat_interleave(3, dim=0))
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-5)
