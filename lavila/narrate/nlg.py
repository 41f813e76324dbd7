"""`lavila eval-narrator`: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) of a narrator against human narrations (spec §9.6).

Protocol of the reference's ``eval_narrator.py``:

* clips: every ``--subsample``-th row of ``ego4d_val.pkl`` (10000 in the paper), 4 frames, centre crop;
* per clip one multinomial sample (top-p 0.95, T 0.7, max length 77) and a teacher-forced pass (perplexity);
* both the human narration (GPT-2 ids decoded) and the sample are re-tokenised with the BERT-uncased tokenizer and
  decoded without ``[CLS]``/``[SEP]``: lower-cased, punctuation split off, word pieces joined, and (as
  transformers 4.27's ``decode`` did by default) spaces before ``. , ! ?`` and in contractions cleaned up;
* scorers: the COCO caption evaluation code that ``nlg-eval`` wraps (BLEU with the "closest" reference length,
  METEOR 1.5 jar, ROUGE-L with beta 1.2, CIDEr-D with corpus IDF over the references, sigma 6), one reference per
  hypothesis, no PTB tokenisation. We call ``pycocoevalcap`` (optional dependency ``lavila[nlg]``; METEOR needs
  ``java`` on the PATH and is skipped with a warning otherwise).

Two perplexities are printed as in the reference: "with teacher" (teacher-forced) and "without teacher", which is the
reference's quirk: the cross-entropy of the *human* caption's tokens conditioned on the *sampled* prefix.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lavila.config import option
from lavila.errors import LavilaError

log = logging.getLogger(__name__)

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def bert_normalize(text: str, tokenizer: Any) -> str:
    """The reference's ``bert.decode(bert(text).input_ids[1:-1])`` with transformers 4.27's default cleanup."""
    ids = tokenizer(text)["input_ids"][1:-1]
    return tokenizer.decode(ids, clean_up_tokenization_spaces=True)


def _require_pycocoevalcap() -> None:
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as err:
        raise ImportError("the NLG metrics need pycocoevalcap: pip install 'lavila[nlg]' (METEOR also needs java)") \
            from err


def compute_nlg_metrics(references: Sequence[str], hypotheses: Sequence[str],
                        meteor: bool | None = None) -> dict[str, float]:
    """Corpus metrics, one reference per hypothesis (``nlgeval.compute_metrics([references], hypotheses)``).

    ``meteor=None`` runs METEOR when ``java`` is available, else leaves it out with a warning.
    """
    _require_pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    refs = {i: [r.strip()] for i, r in enumerate(references)}
    hyps = {i: [h.strip()] for i, h in enumerate(hypotheses)}
    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its counts
        bleu, _ = Bleu(4).compute_score(refs, hyps)
    out.update({f"Bleu_{k + 1}": float(v) for k, v in enumerate(bleu)})
    if meteor is None:
        meteor = shutil.which("java") is not None
        if not meteor:
            log.warning("METEOR skipped: it runs the METEOR 1.5 jar and `java` is not on the PATH")
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["METEOR"] = float(scorer.compute_score(refs, hyps)[0])
        finally:
            with contextlib.suppress(Exception):
                scorer.meteor_p.stdin.close()
                scorer.meteor_p.kill()
                scorer.meteor_p.wait()
    out["ROUGE_L"] = float(Rouge().compute_score(refs, hyps)[0])
    out["CIDEr"] = float(Cider().compute_score(refs, hyps)[0])
    return out


# ------------------------------------------------------------------------------------------------------ model runs
def evaluate_narrator(
    model: Any, tokenizer: Any, bert_tokenizer: Any, rows: Sequence[tuple], loader_kwargs: dict[str, Any],
    gen: Any, *, batch_size: int = 16, num_workers: int = 4, generator: torch.Generator | None = None,
    caption_file: Path | None = None,
) -> dict[str, Any]:
    """Sample captions for ``rows`` and score them against the rows' human narrations."""
    from torch.utils.data import DataLoader

    from lavila.narrate.generate import decode_one, generate, teacher_forced_perplexity
    from lavila.narrate.narrate import ClipDataset, _collate, clip_transform

    dataset = ClipDataset(list(rows), list(range(len(rows))), transform=clip_transform(model),
                          clip_length=model.config.vision.num_frames, **loader_kwargs)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    param = next(model.parameters())
    R = gen.num_return_sequences
    references, hypotheses, lines = [], [], []
    ppl_teacher, ppl_free = [], []
    failed = 0
    for indices, video, failures in loader:
        for i, why in failures.items():
            log.warning("clip %d (%s) skipped: %s", i, rows[i][0], why)
        failed += len(failures)
        if video is None:
            continue
        texts = [r if isinstance(r, str) else r[0] for r in (rows[i][3] for i in indices)]
        target = tokenizer(texts).to(param.device)
        if target.ndim == 1:
            target = target[None]
        with torch.inference_mode():
            tokens = model.encode_image(video.to(param.device, param.dtype))
            teacher = teacher_forced_perplexity(model, tokens, target)
            out = generate(model, tokens, gen, target=target.repeat_interleave(R, dim=0), generator=generator)
        ppl_teacher += teacher.float().cpu().tolist()
        ppl_free += out.scores.view(-1, R).mean(1).float().cpu().tolist()
        for j, i in enumerate(indices):
            gt = bert_normalize(decode_one(target[j].cpu(), tokenizer, model.bos_token_id, model.eos_token_id),
                                bert_tokenizer)
            for k in range(R):
                hyp = bert_normalize(decode_one(out.ids[j * R + k].cpu(), tokenizer, model.bos_token_id,
                                                model.eos_token_id), bert_tokenizer)
                references.append(gt)
                hypotheses.append(hyp)
                lines.append(f"[{i:6d}] Groundtruth              |                 | {gt}")
                lines.append(f"[{i:6d}] Generated                | PPL : {out.scores[j * R + k]:9.3f} | {hyp}")
    if not hypotheses:
        raise RuntimeError(f"no clip could be decoded ({failed} failures)")
    metrics = compute_nlg_metrics(references, hypotheses)
    result = {
        "clips": len(ppl_teacher), "failed_clips": failed,
        "ppl_with_teacher": sum(ppl_teacher) / len(ppl_teacher), "ppl_without_teacher": sum(ppl_free) / len(ppl_free),
        "avg_len_reference": sum(len(s.split(" ")) for s in references) / len(references),
        "avg_len_hypothesis": sum(len(s.split(" ")) for s in hypotheses) / len(hypotheses),
        **metrics,
    }
    if caption_file is not None:
        from lavila.atomic import atomic_write_text

        summary = [f"{k:16s} = {v:9.3f}" if isinstance(v, float) else f"{k:16s} = {v}" for k, v in result.items()]
        atomic_write_text(caption_file, "\n".join(lines + summary) + "\n")
    return result


def load_bert_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        raise OSError(f"cannot load the BERT tokenizer {name_or_path!r} used to normalise captions: pass a local "
                      f"folder with --bert-tokenizer ({err})") from err


@dataclass
class NarratorEvalJob:
    """BLEU/METEOR/ROUGE-L/CIDEr of a narrator's captions against human narrations (the reference's protocol)."""

    checkpoint: str = option(help="narrator checkpoint")
    metadata: str = option(help="validation metadata with human narrations (ego4d_val.pkl)")
    video_root: str = option("datasets/Ego4D/video_5min_chunks_288px/", "Ego4D chunk root")
    chunk_len: int = option(300, "chunk seconds; -1 = <root>/<uid>.mp4 whole files")
    fps: float = option(30, "frame rate of the chunks; -1 = read from the file")
    subsample: int = option(10000, "evaluate every N-th row (reference: 10000)", positive=True)
    tokenizer: str | None = option(None, "GPT-2 tokenizer (folder, HF name or .json); default: the checkpoint's")
    bert_tokenizer: str = option("bert-base-uncased", "BERT-uncased tokenizer name or folder")
    num_frames: int | None = option(None, "frames per clip (default: the checkpoint's)", positive=True)
    batch_size: int = option(16, "clips per forward pass", positive=True)
    num_workers: int = option(4, "decoding processes", min=0)
    num_return_sequences: int = option(1, "captions sampled per clip", positive=True)
    temperature: float = option(0.7, "sampling temperature", positive=True)
    top_p: float = option(0.95, "nucleus sampling threshold", positive=True)
    top_k: int = option(0, "top-k sampling (0 = off)", min=0)
    max_len: int = option(77, "max caption length in tokens, BOS included", positive=True)
    early_stop: bool = option(False, "stop once every sequence emitted EOS")
    seed: int = option(0, "sampling seed (the reference is unseeded; we seed for repeatability)")
    device: str | None = option(None, "cpu, cuda, ... (default: cuda if available)")
    use_half: bool = option(False, "fp16 model and frames (GPU)")
    output: Path = option(Path("caption.txt"), "per-clip captions + summary")
    metrics_json: Path | None = option(None, "also write the metrics as JSON here")


def run_eval_narrator(args: NarratorEvalJob) -> int:
    from lavila.data.metadata import load_metadata
    from lavila.dist import resolve_device
    from lavila.models.hub import resolve_checkpoint
    from lavila.narrate.generate import GenerationConfig
    from lavila.narrate.narrate import _load_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.checkpoint = str(resolve_checkpoint(args.checkpoint))  # a file, a released name or a URL (cached)
    try:
        _require_pycocoevalcap()
        if shutil.which("java") is None:  # said in the first second, not after every clip was captioned
            print("lavila eval-narrator: note: METEOR left out: it runs a Java jar and `java` is not on the PATH "
                  "(apt-get install default-jre-headless)", file=sys.stderr)
        bert = load_bert_tokenizer(args.bert_tokenizer)
        rows = load_metadata(args.metadata)[:: args.subsample]
    except (ImportError, OSError, ValueError) as err:
        raise LavilaError(str(err), exit_code=2) from err
    device = resolve_device(args.device)
    model, tokenizer = _load_model(args, device)
    gen = GenerationConfig(strategy="sample", max_len=args.max_len, temperature=args.temperature,
                           top_k=args.top_k or None, top_p=args.top_p, num_return_sequences=args.num_return_sequences,
                           early_stopping=args.early_stop)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    result = evaluate_narrator(model, tokenizer, bert, rows,
                               {"root": args.video_root, "chunk_len": args.chunk_len, "fps": args.fps}, gen,
                               batch_size=args.batch_size, num_workers=args.num_workers, generator=generator,
                               caption_file=args.output)
    for k, v in result.items():
        print(f"{k:20s} = {v:9.4f}" if isinstance(v, float) else f"{k:20s} = {v}")
    if args.metrics_json:
        from lavila.atomic import atomic_write_text

        atomic_write_text(args.metrics_json, json.dumps(result, indent=1))
    return 0


__all__ = ["METRIC_NAMES", "NarratorEvalJob", "bert_normalize", "compute_nlg_metrics", "evaluate_narrator"]
