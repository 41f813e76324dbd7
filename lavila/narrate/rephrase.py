"""`lavila rephrase`: paraphrase human narrations with a T5 paraphraser (spec §8.4, the "rephraser").

    lavila rephrase --metadata ego4d_train.pkl --output ego4d_train.rephraser.no_punkt_top3.pkl

Input rows ``(uid, start, end, text)``; output rows ``(uid, start, end, [paraphrases])`` — the shape of the released
``ego4d_train.rephraser.no_punkt_top3.pkl``, which the pre-training dataset samples one text from per access.

The reference repository ships no rephraser code; its prompt and decoding settings are not known (spec §14 item 2).
Our choices, all flags:

* model ``ramsrigouthamg/t5-large-paraphraser-diverse-high-quality`` (hub name or local folder), the one named by
  the paper's release; prompt ``"paraphrase: {text} </s>"`` as on that model's card;
* sampling with top-k 120, top-p 0.95, temperature 1.0, max 64 new tokens, ``--num-return-sequences 3``;
* "no_punkt": punctuation removed from the outputs (except ``#`` of the ``#C``/``#O`` tags and apostrophes),
  whitespace collapsed; exact duplicates (case-insensitive) dropped, so a row may hold fewer than 3 texts; a row
  whose outputs are all empty keeps the original narration;
* ``--include-original`` also puts the human narration first in each list (whether the release did is unknown).

Resumable and atomic through :mod:`lavila.narrate.shards` (parts in ``<output>.parts/``), batched, with progress.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import string
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lavila.atomic import remove_stale_temps
from lavila.narrate.shards import ShardedOutput, batched

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ramsrigouthamg/t5-large-paraphraser-diverse-high-quality"
PROMPT = "paraphrase: {text} </s>"
_PUNCT = "".join(c for c in string.punctuation if c not in "#'")
_PUNCT_TABLE = str.maketrans({c: " " for c in _PUNCT})


def strip_punctuation(text: str) -> str:
    """Remove punctuation (keeping ``#`` and apostrophes) and collapse whitespace."""
    return re.sub(r"\s+", " ", text.translate(_PUNCT_TABLE)).strip()


@dataclass
class RephraseSettings:
    model: str = DEFAULT_MODEL
    prompt: str = PROMPT
    num_return_sequences: int = 3
    top_k: int = 120
    top_p: float = 0.95
    temperature: float = 1.0
    max_new_tokens: int = 64
    max_input_tokens: int = 128
    no_punkt: bool = True
    include_original: bool = False
    seed: int = 0


def clean_outputs(original: str, outputs: list[str], settings: RephraseSettings) -> list[str]:
    """Post-process one row's generated paraphrases (see module docstring)."""
    seen: set[str] = set()
    texts: list[str] = []
    candidates = ([original] if settings.include_original else []) + outputs
    for text in candidates:
        text = strip_punctuation(text) if settings.no_punkt else re.sub(r"\s+", " ", text).strip()
        key = text.lower()
        if text and key not in seen:
            seen.add(key)
            texts.append(text)
    return texts or [original]


class Rephraser:
    """A seq2seq paraphraser and its tokenizer, generating ``num_return_sequences`` outputs per input, batched."""

    def __init__(self, settings: RephraseSettings, device: torch.device, model: Any = None,
                 tokenizer: Any = None) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.settings = settings
        self.device = device
        try:
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(settings.model)
            self.model = model or AutoModelForSeq2SeqLM.from_pretrained(settings.model)
        except OSError as err:
            raise OSError(f"cannot load the paraphraser {settings.model!r}: pass a local folder with --model "
                          f"({err})") from err
        self.model.eval().to(device)

    @torch.inference_mode()
    def __call__(self, texts: list[str], generator_seed: int) -> list[list[str]]:
        s = self.settings
        prompts = [s.prompt.format(text=t) for t in texts]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                             max_length=s.max_input_tokens).to(self.device)
        torch.manual_seed(generator_seed)  # HF generate samples from the global RNG
        out = self.model.generate(**enc, do_sample=True, top_k=s.top_k, top_p=s.top_p, temperature=s.temperature,
                                  max_new_tokens=s.max_new_tokens, num_return_sequences=s.num_return_sequences)
        decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        R = s.num_return_sequences
        return [decoded[i * R:(i + 1) * R] for i in range(len(texts))]


def rephrase_metadata(metadata: str | Path, output: str | Path, settings: RephraseSettings, *,
                      device: torch.device, batch_size: int = 32, part_size: int = 1024, limit: int | None = None,
                      overwrite: bool = False, rephraser: Rephraser | None = None, progress: bool = True,
                      rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Paraphrase every row's narration, resumably; write ``output`` (pickle or Parquet) once all rows are done."""
    from tqdm import tqdm

    from lavila.data.metadata import load_metadata, save_metadata

    rows = load_metadata(metadata)
    bad = [i for i, r in enumerate(rows) if not isinstance(r[3], str)]
    if bad:
        raise ValueError(f"{metadata}: row {bad[0]} has a list of texts; the rephraser takes human narrations "
                         f"(one string per row) ({len(bad)} such rows)")
    output = Path(output)
    remove_stale_temps(output.parent, output.name)  # of a merge a kill interrupted; parts: ShardedOutput.open
    shards = ShardedOutput(output.with_name(output.name + ".parts"), total=len(rows),
                           fingerprint={"metadata": str(Path(metadata).resolve()), "settings": asdict(settings)})
    shards.open(overwrite=overwrite)
    pending = shards.pending(rank, world_size)
    if limit is not None:
        pending = pending[:limit]
    summary: dict[str, Any] = {"total": len(rows), "pending_at_start": len(pending), "written": None}
    if pending:
        rephraser = rephraser or Rephraser(settings, device)
        bar = tqdm(total=len(pending), desc="rephrase", unit="row", dynamic_ncols=True, disable=not progress)
        results: dict[int, Any] = {}
        start = time.perf_counter()
        try:
            for chunk in batched(pending, batch_size):
                outs = rephraser([rows[i][3] for i in chunk], settings.seed * 1_000_003 + chunk[0])
                for i, generated in zip(chunk, outs):
                    uid, t0, t1, text = rows[i][:4]
                    results[i] = [uid, t0, t1, clean_outputs(text, generated, settings)]
                bar.update(len(chunk))
                if len(results) >= part_size:
                    shards.write_part(results, rank=rank)
                    results = {}
        finally:
            if results:
                shards.write_part(results, rank=rank)
            bar.close()
        summary["seconds"] = time.perf_counter() - start
    if shards.is_complete():
        done, _ = shards.collect()
        save_metadata([(r[0], r[1], r[2], list(r[3])) for r in done.values()], output)
        summary["written"] = str(output)
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    d = RephraseSettings()
    parser.add_argument("--metadata", required=True, help="human narrations (.pkl or .parquet, 4-tuples)")
    parser.add_argument("--output", required=True, type=Path, help="output .pkl or .parquet")
    parser.add_argument("--model", default=d.model, help="T5 paraphraser: HF hub name or local folder")
    parser.add_argument("--prompt", default=d.prompt, help="input template; {text} is the narration")
    parser.add_argument("--num-return-sequences", type=int, default=d.num_return_sequences)
    parser.add_argument("--top-k", type=int, default=d.top_k)
    parser.add_argument("--top-p", type=float, default=d.top_p)
    parser.add_argument("--temperature", type=float, default=d.temperature)
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--keep-punctuation", action="store_true", help="do not strip punctuation (no_punkt off)")
    parser.add_argument("--include-original", action="store_true", help="put the human narration first in each list")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--part-size", type=int, default=1024, help="rows per atomic part file")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--limit", type=int, help="rephrase at most this many rows in this run (resumable)")
    parser.add_argument("--overwrite", action="store_true", help="discard parts of a different earlier job")


def run(args: argparse.Namespace) -> int:
    from lavila.dist import world_info_from_env
    from lavila.narrate.narrate import pick_device
    from lavila.narrate.shards import ShardError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = RephraseSettings(model=args.model, prompt=args.prompt, num_return_sequences=args.num_return_sequences,
                                top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                                max_new_tokens=args.max_new_tokens, no_punkt=not args.keep_punctuation,
                                include_original=args.include_original, seed=args.seed)
    if "{text}" not in settings.prompt:
        print("rephrase: --prompt must contain {text}", file=sys.stderr)
        return 2
    info = world_info_from_env()
    try:
        summary = rephrase_metadata(args.metadata, args.output, settings, device=pick_device(args.device,
                                    info.local_rank), batch_size=args.batch_size, part_size=args.part_size,
                                    limit=args.limit, overwrite=args.overwrite, progress=info.rank == 0,
                                    rank=info.rank, world_size=info.world_size)
    except (OSError, ValueError, ShardError) as err:
        print(f"rephrase: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    if not summary["written"]:
        print("not all rows are done yet: rerun the same command to continue", file=sys.stderr)
    return 0
