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

import json
import logging
import re
import string
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lavila.atomic import remove_stale_temps
from lavila.config import ConfigError, Where, option
from lavila.errors import LavilaError
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
    model: str = option(DEFAULT_MODEL, "T5 paraphraser: HF hub name or local folder")
    prompt: str = option(PROMPT, "input template; {text} is the narration")
    num_return_sequences: int = option(3, "paraphrases generated per narration", positive=True)
    top_k: int = option(120, "top-k sampling", min=0)
    top_p: float = option(0.95, "nucleus sampling threshold", positive=True)
    temperature: float = option(1.0, "sampling temperature", positive=True)
    max_new_tokens: int = option(64, "max tokens per paraphrase", positive=True)
    max_input_tokens: int = option(128, "narrations are truncated to this many tokens", positive=True)
    no_punkt: bool = option(True, "strip punctuation from the outputs (--keep-punctuation keeps it)",
                            aliases=("--keep-punctuation=false",))
    include_original: bool = option(False, "put the human narration first in each list")
    seed: int = option(0, "sampling seed")


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
    from lavila.data.metadata import load_metadata, save_metadata
    from lavila.progress import progress as progress_bar  # tqdm on a terminal, plain periodic lines in a log

    rows = load_metadata(metadata)
    bad = [i for i, r in enumerate(rows) if not isinstance(r[3], str)]
    if bad:
        raise ValueError(f"{metadata}: row {bad[0]} has a list of texts; the rephraser takes human narrations "
                         f"(one string per row) ({len(bad)} such rows)")
    output = Path(output)
    remove_stale_temps(output.parent, output.name)  # of a merge a kill interrupted; parts: ShardedOutput.open
    shards = ShardedOutput(output.with_name(output.name + ".parts"), total=len(rows),
                           fingerprint={"metadata": str(Path(metadata).resolve()), "settings": asdict(settings)},
                           output_option="--output")
    shards.open(overwrite=overwrite)
    pending = shards.pending(rank, world_size)
    if limit is not None:
        pending = pending[:limit]
    summary: dict[str, Any] = {"total": len(rows), "pending_at_start": len(pending), "written": None}
    if pending:
        rephraser = rephraser or Rephraser(settings, device)
        bar = progress_bar(total=len(pending), desc="rephrase", unit="row", dynamic_ncols=True, enabled=progress)
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


@dataclass
class RephraseJob:
    """Paraphrase human narrations with a T5 rephraser, resumably (parts in ``<output>.parts/``)."""

    metadata: str = option(help="human narrations (.pkl or .parquet, 4-tuples)")
    output: Path = option(help="output .pkl or .parquet")
    settings: RephraseSettings = field(default_factory=RephraseSettings)  # model, prompt and decoding flags
    batch_size: int = option(32, "narrations per generate() call", positive=True)
    part_size: int = option(1024, "rows per atomic part file", positive=True)
    device: str | None = option(None, "cpu, cuda, ... (default: cuda if available)")
    limit: int | None = option(None, "rephrase at most this many rows in this run (resumable)", positive=True)
    overwrite: bool = option(False, "discard parts of a different earlier job")

    def validate(self, where: Where) -> None:
        if "{text}" not in self.settings.prompt:
            raise ConfigError(f"{where('prompt')}: must contain {{text}}")


def run_rephrase(job: RephraseJob) -> int:
    from lavila.dist import resolve_device, world_info_from_env
    from lavila.narrate.shards import ShardError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from lavila.locks import FolderLockedError, output_lock

    info = world_info_from_env()
    parts = Path(job.output).with_name(Path(job.output).name + ".parts")
    try:
        # one job per output (ranks are independent processes that share the parts folder: one lock file each)
        with output_lock(parts, "lavila rephrase", rank=info.rank):
            summary = rephrase_metadata(job.metadata, job.output, job.settings, device=resolve_device(
                job.device, info.local_rank), batch_size=job.batch_size, part_size=job.part_size, limit=job.limit,
                overwrite=job.overwrite, progress=info.rank == 0, rank=info.rank, world_size=info.world_size)
    except (FolderLockedError, ShardError):
        raise  # their own one line and exit code (1, as in narrate), not a bad argument
    except OSError as err:
        if err.errno is not None and not isinstance(err, FileNotFoundError):
            raise  # the disk refused a write (read-only, full, ...): the CLI's one line, exit 1, not a bad argument
        raise LavilaError(str(err), exit_code=2) from err  # a missing input, or a paraphraser that does not load
    except ValueError as err:
        raise LavilaError(str(err), exit_code=2) from err
    print(json.dumps(summary))
    if not summary["written"]:
        print("not all rows are done yet: rerun the same command to continue", file=sys.stderr)
    return 0
