"""Caption generation for the VCLM narrator: sampling, greedy and beam search, with a KV cache.

The reference (``VCLM_HF.generate``) re-runs the decoder over the whole prefix at every step. Here the decoder's
self-attention keys/values are kept in HF's ``EncoderDecoderCache`` and the cross-attention keys/values of the
visual tokens are computed once per *clip* (not per return sequence: the R sequences of a clip share them, see
``lavila.models.gpt2_gated.VisualCrossAttention``), at the first step; ``use_cache=False`` keeps the reference's
full recompute (the tests check both give the same tokens and scores). All clips and return sequences run as one
batch. Sampling and greedy decoding are the loop below (the reference's score and post-EOS behaviour, and a
caller's ``torch.Generator``, are not HF ``generate``'s); beam search is HF ``generate(num_beams=...)`` itself.

Reference semantics kept on purpose:

* rows are ordered clip-major (clip 0's R sequences first, as ``repeat_interleave``), every row starts with BOS;
* warpers in HF order: temperature (if != 1), top-k (if > 0), top-p (if < 1), min_tokens_to_keep 1 (top-p by
  ``lavila.narrate.nucleus``: HF's rule, found without a full sort);
* the per-sequence score is ``exp(mean entropy of the *un-warped* next-token distribution)`` over the steps up to
  and including the one that emits EOS (not a likelihood of the sampled text); with a ``target`` it is the
  teacher-forced perplexity (CE ignoring pad id 0);
* generation continues after a row's EOS (the tokens are ignored by :func:`decode_one`) until ``max_len`` or, with
  ``early_stopping``, until every row has emitted EOS.

Deliberate change: with ``early_stopping`` the reference breaks *before* appending the step that completed the last
row, so that row has no EOS and its last word is cut by ``decode_one``; we append the step, then stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import GenerationConfig as HFGenerationConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

from lavila.config import option
from lavila.narrate.nucleus import NucleusLogitsWarper

PAD_ID = 0  # the narrator's pad id (GPT-2's "!"), as in the reference tokeniser


def _cache_kwarg() -> str:
    """HF renamed GPT-2's ``past_key_values`` argument to ``cache`` during 5.x; use whichever this version takes."""
    import inspect

    from transformers import GPT2LMHeadModel

    return "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"


CACHE_KWARG = _cache_kwarg()


@dataclass
class GenerationConfig:
    """Decoding settings. Defaults are the reference inference defaults (``main_infer_narrator.py``)."""

    strategy: Literal["sample", "greedy", "beam"] = option("sample", "sample (multinomial), greedy or beam search")
    max_len: int = option(77, "max caption length in tokens, BOS included (at most max_len - 1 new tokens)")
    temperature: float = option(0.7, "sampling temperature")
    top_k: int | None = option(None, "top-k sampling (None or 0 = off)")
    top_p: float | None = option(0.95, "nucleus sampling threshold (None = off)")
    num_return_sequences: int = option(10, "captions per clip")
    early_stopping: bool = option(False, "stop once every sequence emitted EOS", aliases=("--early-stop",))
    num_beams: int = option(1, "beams (strategy beam)")
    length_penalty: float = option(1.0, "beam-search length penalty")
    use_cache: bool = option(True, "KV cache; --no-cache recomputes the whole prefix each step (reference speed)",
                             aliases=("--no-cache",))

    def validate(self) -> None:
        if self.strategy not in ("sample", "greedy", "beam"):
            raise ValueError(f"unknown decoding strategy {self.strategy!r} (sample, greedy, beam)")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 (BOS + one token), got {self.max_len}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.strategy == "beam" and self.num_beams < 2:
            raise ValueError(f"beam search needs num_beams >= 2, got {self.num_beams} (one beam is greedy decoding: "
                             "strategy greedy)")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ValueError(f"beam search returns at most num_beams={self.num_beams} sequences, "
                             f"asked for {self.num_return_sequences}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass
class GenerationOutput:
    ids: torch.Tensor  # [B*R, L] long, BOS first
    scores: torch.Tensor  # [B*R] float32: exp mean entropy, teacher-forced perplexity, or beam sequence score
    steps: int  # decoder steps run


def logits_warper(temperature: float | None, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
    """The reference's ``_get_logits_warper``: HF's warpers, same order and enabling conditions, except that top-p is
    :class:`lavila.narrate.nucleus.NucleusLogitsWarper` (HF's rule without sorting the vocabulary every step)."""
    warpers = LogitsProcessorList()
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        warpers.append(NucleusLogitsWarper(top_p))
    return warpers


class _DecoderStepper:
    """Next-token logits for a growing batch of prefixes, with (HF cache) or without (full recompute) a KV cache."""

    def __init__(self, decoder: Any, image_tokens: torch.Tensor, use_cache: bool) -> None:
        self.decoder = decoder
        self.image_tokens = image_tokens
        self.use_cache = use_cache
        self.cache: EncoderDecoderCache | None = None
        if use_cache:
            cfg = decoder.config
            self.cache = EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))

    def __call__(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Logits ``[N, V]`` (float32) after ``ids``; ``new_tokens`` = how many trailing ids the cache has not seen."""
        if self.use_cache:
            out = self.decoder(ids[:, -new_tokens:], encoder_hidden_states=self.image_tokens, use_cache=True,
                               logits_to_keep=1, **{CACHE_KWARG: self.cache})
        else:
            out = self.decoder(ids, encoder_hidden_states=self.image_tokens, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1].float()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per row."""
    return torch.special.entr(F.softmax(logits, dim=-1)).sum(dim=-1)


@torch.no_grad()
def generate(
    model: Any,
    image_tokens: torch.Tensor,
    config: GenerationConfig | None = None,
    *,
    target: torch.Tensor | None = None,
    teacher_forcing: bool = False,
    generator: torch.Generator | None = None,
    generators: list[torch.Generator] | None = None,
) -> GenerationOutput:
    """Generate ``num_return_sequences`` captions per clip from pooled visual tokens ``[B, Q, E]``.

    ``model`` is a :class:`lavila.models.narrator.VCLM` (uses ``text_decoder``, ``bos_token_id``, ``eos_token_id``).
    ``target [B*R, L]`` switches the score to teacher-forced perplexity; ``teacher_forcing`` also conditions on it.

    Sampling randomness: ``generator`` drives one ``torch.multinomial`` over the whole batch (the reference's
    sampler), so a clip's captions depend on which clips share its batch. ``generators`` (one per clip) makes them
    depend on that clip's generator only — whatever the batch size, order or device — which is what a resumable,
    sharded job needs (see :func:`_uniforms_per_clip`). Greedy and beam search ignore both.
    """
    cfg = config or GenerationConfig()
    cfg.validate()
    if cfg.strategy == "beam":
        if target is not None:
            raise ValueError("beam search does not take a target")
        return beam_search(model, image_tokens, cfg)
    max_len = min(cfg.max_len, model.max_positions)
    rows = image_tokens.shape[0] * cfg.num_return_sequences  # the visual tokens stay one per clip
    device = image_tokens.device
    if target is not None and target.shape[0] != rows:
        raise ValueError(f"target has {target.shape[0]} rows, expected clips x return sequences = {rows}")
    eos = model.eos_token_id
    ids = torch.full((rows, 1), model.bos_token_id, dtype=torch.long, device=device)
    teacher_forcing = teacher_forcing and target is not None
    cond = target[:, :1] if teacher_forcing else ids  # what the decoder is conditioned on
    score_sum = torch.zeros(rows, device=device)
    count = torch.zeros(rows, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    warp = logits_warper(cfg.temperature, cfg.top_k, cfg.top_p)
    stepper = _DecoderStepper(model.text_decoder, image_tokens, cfg.use_cache)
    uniforms = None
    if generators is not None and cfg.strategy == "sample":
        uniforms = _uniforms_per_clip(generators, image_tokens.shape[0], max_len - 1, cfg.num_return_sequences,
                                      device)
    steps = 0
    for i in range(max_len - 1):
        logits = stepper(cond, new_tokens=cond.shape[1] if i == 0 else 1)
        steps += 1
        if target is not None:
            if i + 1 >= target.shape[1]:
                break
            tgt = target[:, i + 1]
            score_sum += F.cross_entropy(logits, tgt, ignore_index=PAD_ID, reduction="none")
            count += tgt.ne(PAD_ID).float()
        else:
            score_sum += entropy(logits) * (~done)
            count += (~done).float()
        if cfg.strategy == "greedy":
            token = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = F.softmax(warp(ids, logits), dim=-1)
            if uniforms is not None:
                token = _inverse_cdf_sample(probs, uniforms[i])
            else:
                token = torch.multinomial(probs, num_samples=1, generator=generator)
        done |= token[:, 0].eq(eos)
        ids = torch.cat([ids, token], dim=1)
        cond = target[:, : i + 2] if teacher_forcing else ids
        if cfg.early_stopping and bool(done.all()):
            break
    return GenerationOutput(ids=ids, scores=torch.exp(score_sum / count), steps=steps)


def _uniforms_per_clip(generators: list[torch.Generator], clips: int, steps: int, per_clip: int,
                       device: torch.device) -> torch.Tensor:
    """``[steps, clips * per_clip]`` uniforms in [0, 1), rows clip-major: clip ``b`` draws its ``[steps, R]`` block
    from ``generators[b]`` alone, all at once (one call per clip and batch, not per clip and step), on the
    generator's own device, so a clip's draws do not depend on its batch or on where the model runs."""
    if len(generators) != clips:
        raise ValueError(f"generators: expected one per clip ({clips}), got {len(generators)}")
    blocks = [torch.rand((steps, per_clip), generator=g, device=g.device).to(device) for g in generators]
    return torch.stack(blocks, dim=1).reshape(steps, clips * per_clip)


def _inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs [N, V]`` from a given uniform per row (``u [N]``): the first token whose
    cumulative probability reaches ``(1 - u) * total``. Same distribution as ``torch.multinomial``; ``1 - u`` lies
    in (0, 1], so the threshold is > 0 (a leading zero-probability token is never taken) and <= the total (always
    found), and a zero-probability token inside the row never is either (its cumulative value equals its
    predecessor's, which is found first)."""
    cdf = probs.cumsum(dim=-1)
    threshold = (1.0 - u.to(cdf.dtype)).unsqueeze(1) * cdf[:, -1:]
    return torch.searchsorted(cdf, threshold).clamp_(max=probs.shape[-1] - 1)


@torch.no_grad()
def teacher_forced_perplexity(model: Any, image_tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``exp(mean CE)`` of ``target [B, L]`` (pad 0 ignored) in one decoder pass; equals ``generate(target=...,
    teacher_forcing=True)``'s score without the step loop."""
    logits = model.decode(target[:, :-1], image_tokens).float()
    ce = F.cross_entropy(logits.transpose(1, 2), target[:, 1:], ignore_index=PAD_ID, reduction="none")
    return torch.exp(ce.sum(1) / target[:, 1:].ne(PAD_ID).sum(1))


class _ClipCache(EncoderDecoderCache):
    """HF's cache, with beam reordering restricted to the text self-attention part.

    Beams only move within their clip, and the visual keys/values are cached once per *clip* (``[B, ...]``, see
    ``VisualCrossAttention``), not per beam: they stay as they are.
    """

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


class _RowTopLogProbs:
    """Logits processor that keeps, per step, each row's top log-probabilities and changes nothing.

    Beam search only ever extends a row with one of its top ``2 * num_beams`` tokens, so these are enough to add up
    a hypothesis' score afterwards; HF's own ``sequences_scores`` would need ``output_scores``, which stores every
    step's full ``[rows, vocab]`` distribution.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        values, tokens = scores.topk(min(self.k, scores.shape[-1]), dim=-1)
        self.values.append(values)
        self.tokens.append(tokens)
        return scores

    def sequence_log_probs(self, sequences: torch.Tensor, beam_indices: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
        """(sum of log p, number of generated tokens) per returned row, summed step by step in float32 as the
        search accumulated them."""
        steps = beam_indices.shape[1]
        generated = beam_indices.ge(0)
        total = torch.zeros(sequences.shape[0], device=sequences.device)
        for t in range(steps):
            rows = beam_indices[:, t].clamp(min=0)
            hit = self.tokens[t][rows].eq(sequences[:, t + 1].unsqueeze(1))
            if not bool((hit.any(dim=1) | ~generated[:, t]).all()):
                raise RuntimeError("beam search picked a token outside its row's top candidates (ties?)")
            value = torch.where(hit, self.values[t][rows], 0.0).sum(dim=1)  # the one hit, exactly
            total = total + torch.where(generated[:, t], value, torch.zeros_like(value))
        return total, generated.sum(dim=1)


@torch.no_grad()
def beam_search(model: Any, image_tokens: torch.Tensor, cfg: GenerationConfig) -> GenerationOutput:
    """Deterministic beam search per clip: HF ``generate(num_beams=...)`` on the narrator's own GPT-2 decoder.

    A hypothesis' score is ``sum log p / n ** length_penalty`` with ``n`` the number of generated tokens including
    EOS (HF's ``sequence_scores``; normalised in float64 here, HF does it in float32). A clip stops once it has
    ``num_beams`` finished hypotheses and (``early_stopping``) or no live beam can still beat the worst of them;
    beams still open at ``max_len`` are scored as they are. Rows after EOS are padded with 0.

    The visual tokens stay one per clip: a forward pre-hook hands them to every decoder call (HF would otherwise
    repeat them per beam), and :class:`_ClipCache` keeps their keys/values out of the beam reordering.
    """
    decoder = model.text_decoder
    clips, eos = image_tokens.shape[0], model.eos_token_id
    hf_config = HFGenerationConfig(
        num_beams=cfg.num_beams, num_return_sequences=cfg.num_return_sequences,
        max_length=min(cfg.max_len, model.max_positions), early_stopping=cfg.early_stopping,
        length_penalty=cfg.length_penalty, do_sample=False, bos_token_id=model.bos_token_id, eos_token_id=eos,
        pad_token_id=PAD_ID, use_cache=cfg.use_cache, return_dict_in_generate=True)
    top = _RowTopLogProbs(2 * cfg.num_beams)
    calls = 0

    def add_visual_tokens(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        nonlocal calls
        calls += 1
        return args, {**kwargs, "encoder_hidden_states": image_tokens}

    ids = torch.full((clips, 1), model.bos_token_id, dtype=torch.long, device=image_tokens.device)
    extra = {}
    if cfg.use_cache:
        extra[CACHE_KWARG] = _ClipCache(DynamicCache(config=decoder.config), DynamicCache(config=decoder.config))
    hook = decoder.register_forward_pre_hook(add_visual_tokens, with_kwargs=True)
    try:
        out = decoder.generate(ids, generation_config=hf_config, attention_mask=torch.ones_like(ids),
                               logits_processor=LogitsProcessorList([top]), **extra)
    finally:
        hook.remove()
    seq = out.sequences
    log_probs, lengths = top.sequence_log_probs(seq, out.beam_indices)
    scores = [s / n**cfg.length_penalty for s, n in zip(log_probs.tolist(), lengths.tolist(), strict=True)]
    body = seq[:, 1:]  # HF fills finished rows with EOS (it takes pad id 0 for "none"); ours are 0 after EOS
    is_eos = body.eq(eos)
    body.masked_fill_(is_eos.cumsum(dim=1).sub(is_eos.long()).gt(0), PAD_ID)
    return GenerationOutput(ids=seq, scores=torch.tensor(scores, device=seq.device), steps=calls)


def decode_one(ids: torch.Tensor | list[int], tokenizer: Any, bos_token_id: int, eos_token_id: int) -> str:
    """Text of one generated row: ids after BOS up to (excluding) the first EOS.

    The reference's ``decode_one`` cuts at ``len - 1`` when no EOS is found, dropping the last generated token;
    we keep it (a row without EOS simply ran out of length).
    """
    seq = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    body = seq[1:]
    if eos_token_id in body:
        body = body[: body.index(eos_token_id)]
    hf = getattr(tokenizer, "tokenizer", tokenizer)  # lavila's HFGPT2Tokenizer wraps an HF tokenizer
    return hf.decode(body, skip_special_tokens=False)
