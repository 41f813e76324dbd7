"""Caption generation: reference semantics (score, warpers, EOS), and the KV cache changing nothing."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lavila.narrate.generate import (
    GenerationConfig,
    decode_one,
    generate,
    logits_warper,
    teacher_forced_perplexity,
)

# --------------------------------------------------------------------------------------------- a scripted decoder
# Vocabulary {0: BOS, 1, 2, 3: EOS}. The next-token distribution depends only on the prefix length.
STEP_PROBS = {
    1: [0.1, 0.6, 0.2, 0.1],  # greedy -> 1
    2: [0.2, 0.1, 0.1, 0.6],  # greedy -> 3 (EOS)
    3: [0.7, 0.1, 0.1, 0.1],  # after EOS: generated but not scored
}


class ScriptedDecoder:
    def __call__(self, ids, encoder_hidden_states=None, use_cache=False, logits_to_keep=0, **_):
        probs = torch.tensor(STEP_PROBS[ids.shape[1]]).log()
        return SimpleNamespace(logits=probs.expand(ids.shape[0], 1, 4).clone())


SCRIPTED = SimpleNamespace(text_decoder=ScriptedDecoder(), bos_token_id=0, eos_token_id=3, max_positions=16)


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p)


def test_score_is_exp_mean_entropy_up_to_and_including_eos() -> None:
    out = generate(SCRIPTED, torch.zeros(2, 1, 1), GenerationConfig(strategy="greedy", max_len=4,
                                                                     num_return_sequences=1, use_cache=False))
    assert out.ids.tolist() == [[0, 1, 3, 0]] * 2  # keeps generating after EOS, like the reference
    # steps 1 and 2 count (step 2 emitted EOS), step 3 does not
    expected = math.exp((_entropy(STEP_PROBS[1]) + _entropy(STEP_PROBS[2])) / 2)
    assert out.scores.tolist() == pytest.approx([expected] * 2, rel=1e-6)


def test_early_stopping_appends_the_final_eos_then_stops() -> None:
    out = generate(SCRIPTED, torch.zeros(1, 1, 1), GenerationConfig(strategy="greedy", max_len=10,
                                                                     early_stopping=True, num_return_sequences=1,
                                                                     use_cache=False))
    assert out.ids.tolist() == [[0, 1, 3]] and out.steps == 2


def test_target_score_is_perplexity_ignoring_pad() -> None:
    target = torch.tensor([[0, 1, 2, 0]])  # last position is padding (id 0)
    out = generate(SCRIPTED, torch.zeros(1, 1, 1), GenerationConfig(strategy="greedy", max_len=4,
                                                                     num_return_sequences=1, use_cache=False),
                   target=target)
    # CE of target 1 at step 1 (p=0.6) and target 2 at step 2 (p=0.1); the pad target is ignored
    assert out.scores.item() == pytest.approx(math.exp((-math.log(0.6) - math.log(0.1)) / 2), rel=1e-6)


def test_warpers_apply_temperature_then_top_k_then_top_p() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    probs = F.softmax(logits_warper(None, 3, 0.8)(None, logits), dim=-1)
    # top-k 3 drops 0.05; renormalised ascending [0.158, 0.316, 0.526] has cumsum 0.158 <= 1-0.8 -> drop 0.15
    assert probs[0].tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0], abs=1e-6)
    probs = F.softmax(logits_warper(0.5, 3, 0.8)(None, logits), dim=-1)
    # T=0.5 squares the probabilities first: [.25, .09, .0225, .0025] -> top-k drops .0025 -> top-p drops .0225
    assert probs[0].tolist() == pytest.approx([0.25 / 0.34, 0.09 / 0.34, 0.0, 0.0], abs=1e-6)


# ----------------------------------------------------------------------------------- the real (tiny) narrator
@pytest.fixture(scope="module")
def tokens(tiny_narrator):
    model, _ = tiny_narrator
    torch.manual_seed(0)
    with torch.no_grad():
        return model.encode_image(torch.randn(2, 3, 4, 32, 32))


@pytest.mark.parametrize("settings", [
    dict(strategy="greedy"),
    dict(strategy="sample", temperature=0.7, top_p=0.95),
    dict(strategy="sample", temperature=1.3, top_k=20),
    dict(strategy="beam", num_beams=3),
])
def test_kv_cache_and_full_recompute_agree(tiny_narrator, tokens, settings) -> None:
    model, _ = tiny_narrator
    outs = []
    for use_cache in (True, False):
        cfg = GenerationConfig(max_len=14, num_return_sequences=3, use_cache=use_cache, **settings)
        outs.append(generate(model, tokens, cfg, generator=torch.Generator().manual_seed(7)))
    assert outs[0].ids.shape[0] == 2 * 3
    assert torch.equal(outs[0].ids, outs[1].ids)
    torch.testing.assert_close(outs[0].scores, outs[1].scores, rtol=1e-5, atol=1e-5)


def test_kv_cache_with_sparse_cross_attention_layers() -> None:
    from lavila.narrate.tiny import create_tiny_narrator

    model, _ = create_tiny_narrator(seed=1, text_layers=3, cross_attn_freq=2)  # x-attn on layers 0 and 2 only
    with torch.no_grad():
        tokens = model.encode_image(torch.randn(1, 3, 4, 32, 32))
    for settings in (dict(strategy="greedy"), dict(strategy="beam", num_beams=2)):
        cached, full = (generate(model, tokens, GenerationConfig(max_len=10, num_return_sequences=2,
                                                                 use_cache=c, **settings)) for c in (True, False))
        assert torch.equal(cached.ids, full.ids)
        torch.testing.assert_close(cached.scores, full.scores, rtol=1e-5, atol=1e-5)


def _reference_loop(model, image_tokens, R, max_len, temperature, top_p, generator):
    """The spec's pseudo-code (§6.7), written out: full recompute, manual warpers, multinomial, entropy score."""
    image_tokens = image_tokens.repeat_interleave(R, dim=0)
    n = image_tokens.shape[0]
    seq = torch.full((n, 1), model.bos_token_id)
    score_sum, count, done = torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    for _ in range(max_len - 1):
        logits = model.text_decoder(seq, encoder_hidden_states=image_tokens).logits[:, -1]
        p = logits.softmax(-1)
        score_sum += -(p * p.clamp_min(1e-30).log()).sum(-1) * (~done)
        count += (~done).float()
        warped = logits / temperature
        sorted_logits, order = warped.sort(dim=-1)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[:, -1] = False
        warped = warped.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        tok = torch.multinomial(warped.softmax(-1), 1, generator=generator)
        done |= tok[:, 0] == model.eos_token_id
        seq = torch.cat([seq, tok], dim=1)
    return seq, torch.exp(score_sum / count)


def test_sampling_matches_the_reference_loop(tiny_narrator, tokens) -> None:
    model, _ = tiny_narrator
    with torch.no_grad():
        ref_ids, ref_scores = _reference_loop(model, tokens, 2, 12, 0.7, 0.95, torch.Generator().manual_seed(3))
    out = generate(model, tokens, GenerationConfig(max_len=12, num_return_sequences=2, temperature=0.7, top_p=0.95),
                   generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.ids, ref_ids)
    torch.testing.assert_close(out.scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_teacher_forced_perplexity_one_pass_equals_the_step_loop(tiny_narrator, tokens) -> None:
    model, _ = tiny_narrator
    b = model.bos_token_id  # == EOS, as GPT-2
    target = torch.tensor([[b, 5, 9, 11, b, 0, 0], [b, 7, 7, b, 0, 0, 0]])
    one_pass = teacher_forced_perplexity(model, tokens, target)
    for use_cache in (True, False):
        stepwise = generate(model, tokens, GenerationConfig(max_len=7, num_return_sequences=1, use_cache=use_cache),
                            target=target, teacher_forcing=True).scores
        torch.testing.assert_close(one_pass, stepwise, rtol=1e-5, atol=1e-5)


def test_beam_search_returns_its_best_hypotheses_in_order(tiny_narrator, tokens) -> None:
    model, _ = tiny_narrator
    out = generate(model, tokens, GenerationConfig(strategy="beam", num_beams=4, num_return_sequences=2, max_len=8))
    assert out.ids.shape[0] == 4
    assert (out.scores.view(2, 2)[:, 0] >= out.scores.view(2, 2)[:, 1]).all()
    with pytest.raises(ValueError, match="num_beams"):
        generate(model, tokens, GenerationConfig(strategy="beam", num_beams=2, num_return_sequences=3))


def test_decode_one_cuts_at_the_first_eos_after_bos(tiny_narrator) -> None:
    model, hf_tok = tiny_narrator
    body = hf_tok("#C C stirs the pan").input_ids
    eos = model.eos_token_id
    assert decode_one([eos, *body, eos, 5, 6], hf_tok, eos, eos) == "#C C stirs the pan"
    assert decode_one([eos, *body], hf_tok, eos, eos) == "#C C stirs the pan"  # no EOS: keep everything


# ------------------------------------------------------------- beam search: HF generate vs the former hand-written one
def _former_beam_search(model, image_tokens, K, R, max_len, length_penalty, early_stopping, use_cache):
    """The project's hand-written beam search as it was before HF ``generate`` took over, kept here only to pin
    down that the switch changed no result (ids, scores and steps, bit for bit)."""
    from lavila.narrate.generate import _DecoderStepper

    B = image_tokens.shape[0]
    max_len = min(max_len, model.max_positions)
    eos, bos, lp = model.eos_token_id, model.bos_token_id, length_penalty
    ids = torch.full((B * K, 1), bos, dtype=torch.long)
    beam_scores = torch.zeros(B, K)
    beam_scores[:, 1:] = float("-inf")
    finished = [[] for _ in range(B)]
    clip_done = [False] * B
    stepper = _DecoderStepper(model.text_decoder, image_tokens, use_cache)
    steps = 0
    for i in range(max_len - 1):
        logits = stepper(ids, new_tokens=ids.shape[1] if i == 0 else 1)
        steps += 1
        logp = F.log_softmax(logits, dim=-1)
        vocab = logp.shape[-1]
        top_scores, top_idx = (beam_scores.view(-1, 1) + logp).view(B, K * vocab).topk(2 * K, dim=1)
        next_src, next_tok, next_scores = [], [], []
        n = i + 1
        for b in range(B):
            chosen = 0
            for score, flat in zip(top_scores[b].tolist(), top_idx[b].tolist()):
                beam, tok = divmod(flat, vocab)
                row = b * K + beam
                if clip_done[b]:
                    break
                if tok == eos:
                    if len(finished[b]) < K or score / n**lp > min(f[0] for f in finished[b]):
                        finished[b].append((score / n**lp, ids[row].tolist() + [eos]))
                        finished[b].sort(key=lambda f: -f[0])
                        del finished[b][K:]
                    continue
                next_src.append(row)
                next_tok.append(tok)
                next_scores.append(score)
                chosen += 1
                if chosen == K:
                    break
            if clip_done[b] or chosen < K:
                pad = K - chosen if not clip_done[b] else K
                next_src += [b * K] * pad
                next_tok += [0] * pad
                next_scores += [float("-inf")] * pad
            if not clip_done[b] and len(finished[b]) >= K:
                clip_done[b] = early_stopping or max(next_scores[-K:]) / n**lp <= finished[b][-1][0]
        src = torch.tensor(next_src)
        ids = torch.cat([ids.index_select(0, src), torch.tensor(next_tok).view(-1, 1)], dim=1)
        beam_scores = torch.tensor(next_scores).view(B, K)
        if stepper.cache is not None:
            stepper.cache.self_attention_cache.reorder_cache(src)
        if all(clip_done):
            break
    rows, scores = [], []
    for b in range(B):
        pool = list(finished[b])
        for k in range(K):
            s = beam_scores[b, k].item()
            if s != float("-inf"):
                pool.append((s / (ids.shape[1] - 1) ** lp, ids[b * K + k].tolist()))
        pool.sort(key=lambda f: -f[0])
        for score, seq in pool[:R]:
            rows.append(seq)
            scores.append(score)
    out = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
    for r, seq in enumerate(rows):
        out[r, : len(seq)] = torch.tensor(seq)
    return out, torch.tensor(scores), steps


@pytest.mark.parametrize("eos_boost", [1.0, 4.0, 8.0])  # x the EOS embedding: hypotheses finish at every step
def test_beam_search_through_hf_generate_equals_the_former_implementation(eos_boost) -> None:
    from lavila.narrate.tiny import create_tiny_narrator

    model, _ = create_tiny_narrator(seed=1)
    with torch.no_grad():
        model.text_decoder.transformer.wte.weight[model.eos_token_id] *= eos_boost
        tokens = model.encode_image(torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1)))
    cases = [(2, 2, 1.0, False, 12), (3, 1, 0.5, False, 10), (4, 2, 2.0, True, 9), (3, 3, 1.0, True, 14)]
    for (K, R, lp, early, max_len), use_cache in itertools.product(cases, (False, True)):
        with torch.no_grad():
            ids, scores, steps = _former_beam_search(model, tokens, K, R, max_len, lp, early, use_cache)
        cfg = GenerationConfig(strategy="beam", num_beams=K, num_return_sequences=R, length_penalty=lp,
                               early_stopping=early, max_len=max_len, use_cache=use_cache)
        out = generate(model, tokens, cfg)
        assert torch.equal(out.ids, ids), (K, R, lp, early, use_cache)
        assert torch.equal(out.scores, scores), (K, R, lp, early, use_cache, (out.scores - scores).abs().max())
        assert out.steps == steps


def test_beam_search_needs_two_beams() -> None:
    with pytest.raises(ValueError, match="num_beams >= 2"):
        GenerationConfig(strategy="beam", num_beams=1, num_return_sequences=1).validate()
