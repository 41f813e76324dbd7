"""`lavila narrate`: run a narrator over a metadata file (pseudo-labels) or over your own videos (dense captions).

Metadata mode (the reference's ``main_infer_narrator.py``)::

    lavila narrate --metadata ego4d_train.pkl --checkpoint vclm.pth --output-dir out/ [--use-half]
    torchrun --nproc_per_node=8 -m lavila.cli narrate --metadata ... --output-dir out/      # one node, 8 GPUs
    lavila narrate --metadata ... --output-dir out/ --submitit --nodes 4 --gpus-per-node 8  # SLURM (launcher)

Rank ``r`` of ``W`` narrates rows ``r, r+W, ...``; results go to small atomic part files (``lavila.narrate.shards``)
so an interrupted or pre-empted run resumes where it stopped by rerunning the same command. When every row is done
the parts are merged into the reference's pickle of 5-tuples ``(video_uid, start, end, [texts], [scores])`` plus the
same rows as Parquet. A clip that cannot be decoded is reported in ``failures.json`` and counted; it is never
narrated from zeros and is left out of the merged files. Failures are recorded apart from results, so a rerun
retries exactly the failed clips (a transient read error costs one rerun, not the clip); the job exits 1 while any
clip is failed, and aborts with one line naming the worst errors when more than ``max_failure_rate`` of the clips
fail (a wrong ``--video-root`` fails every clip: it must not "succeed" with 0 rows).

Sampling is seeded per clip (job seed + row index, :func:`clip_generator`), so a clip's narrations do not depend
on ``--batch-size``, ``--limit``, the world size or where a resumed run restarted.

Video mode (your own videos, a file or a whole folder tree; :mod:`lavila.narrate.library`)::

    lavila narrate videos/ clip1.mp4 --checkpoint narrator-tsf-b-gpt2 --every 1s --output-dir captions/
    lavila narrate clip1.mp4 clip2.mkv --checkpoint vclm.pth --window 2.0 --stride 1.0 --output-dir captions/

captions every window of ``--window`` seconds, every ``--stride`` seconds (``--every T``: one caption every T
seconds; ``num_frames`` frames spread over the window, as in training), ``--num-return-sequences`` candidates
each, batched across videos, resumable per video and sharded by video under torchrun; written as
``<video>.json`` (all candidates with scores, the chosen caption), ``<video>.srt``, ``<video>.txt`` and one
``captions.json`` for the library. ``--select``, ``--subject`` and ``--merge-repeats`` choose and tidy the
captions (:mod:`lavila.narrate.captions`).

``--checkpoint`` is a file, a released model-zoo name or a URL (:func:`lavila.models.hub.resolve_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.contrib.logging import logging_redirect_tqdm
from tyro.conf import Positional

from lavila.config import ConfigError, Where, option
from lavila.dist import effective_precision, resolve_device, runnable_precision
from lavila.errors import LavilaError
from lavila.failpoints import failpoint
from lavila.narrate.generate import GenerationConfig, decode_one, generate
from lavila.narrate.shards import ShardedOutput, assigned_indices, batched

log = logging.getLogger(__name__)

DEFAULT_VIDEO_ROOT = "datasets/Ego4D/video_5min_chunks_288px/"
DECODE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, IndexError)


# --------------------------------------------------------------------------------------------------- shared helpers
def clip_transform(model: Any):
    """The model row's eval transform (Resize -> CenterCrop -> Normalize in float), the one every verb uses."""
    from lavila.models import model_transforms

    return model_transforms(model)[1]


class NarrateError(LavilaError):
    """A narration job that must stop (too many clips failed); the message names the worst errors and what to do."""


def clip_generator(seed: int, key: int | str) -> torch.Generator:
    """The sampling generator of one clip: a function of the job seed and the clip's identity only (its metadata
    row, or video + window), never of its batch, so batching, ``--limit``, world size and resumes change nothing.
    Hashed rather than ``seed * K + i`` so that (seed, row) pairs never collide."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def narrate_batch(model: Any, tokenizer: Any, video: torch.Tensor, gen: GenerationConfig,
                  generator: torch.Generator | None = None,
                  generators: list[torch.Generator] | None = None) -> list[tuple[list[str], list[float]]]:
    """Captions for a batch of clips ``[B, 3, T, H, W]``: per clip, R texts and their scores.

    ``generators`` (one per clip, see :func:`clip_generator`) make each clip's samples independent of the batch;
    ``generator`` is one stream for the whole batch.
    """
    param = next(model.parameters())
    # the job's precision is in the weights' dtype (``_load_model``): the clip follows it, no autocast
    with torch.inference_mode():
        tokens = model.encode_image(video.to(device=param.device, dtype=param.dtype))
        out = generate(model, tokens, gen, generator=generator, generators=generators)
    R = gen.num_return_sequences
    texts = [decode_one(row, tokenizer, model.bos_token_id, model.eos_token_id) for row in out.ids.cpu()]
    scores = out.scores.float().cpu().tolist()
    return [(texts[b * R:(b + 1) * R], scores[b * R:(b + 1) * R]) for b in range(video.shape[0])]


def _load_model(args: Any, device: torch.device):
    """The narrator of ``args.checkpoint`` (any job with checkpoint, tokenizer, num_frames, use_half[, precision]),
    in the job's precision (:func:`narrate_precision`): fp16 = half weights (the reference's ``--use-half``), bf16 =
    bf16 weights, fp32 as loaded.

    A checkpoint of another kind (a dual encoder) is one line saying what it is and what wants it; a model with
    random weights (the tiny test narrator) is said to be one, so nobody mistakes its captions for LaViLa's.
    """
    from lavila.models.checkpoint import CheckpointError
    from lavila.narrate.loading import load_narrator

    try:
        model, tokenizer, meta = load_narrator(args.checkpoint, device, tokenizer=args.tokenizer,
                                               num_frames=args.num_frames)
    except CheckpointError as err:
        raise LavilaError(str(err)) from None
    if meta.get("random_weights"):
        log.warning("%s has random weights (a test model): its captions are nonsense", args.checkpoint)
    precision = narrate_precision(args, device)
    if precision in ("fp16", "bf16"):
        # low-precision *weights*, not autocast over fp32 ones: generation is a loop of small matmuls whose cost is
        # reading the weights, and autocast re-reads the fp32 weights to cast them at every generated token.
        # Measured (benchmarks/bench_narrator.py, TSF-B + GPT-2, 1 clip, 10 x 39 tokens, 2 threads, AVX-512-BF16):
        # bf16 autocast 7.26 s, bf16 weights 4.23 s, fp32 7.82 s
        model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
    log.info("narrating in %s on %s", precision, device)
    return model, tokenizer


def requested_precision(job: Any) -> str:
    """``--precision`` with the legacy ``--use-half`` folded in (= fp16); a job without the key (``lavila nlg``'s)
    keeps its old meaning: fp32, or fp16 with ``use_half``."""
    precision = getattr(job, "precision", None)
    if getattr(job, "use_half", False) and precision in (None, "auto", "fp16"):
        return "fp16"
    return precision or "fp32"


def narrate_precision(job: Any, device: torch.device) -> str:
    """The precision a narration runs in on ``device``: ``auto`` = bf16 where the hardware has bf16 units, else fp32
    (:func:`lavila.dist.effective_precision`, the rule of training and evaluation too). fp16 needs CUDA: an explicit
    ``--precision fp16`` on CPU is a one-line error; the legacy ``--use-half`` keeps its old meaning there (a
    warning, then fp32)."""
    requested = requested_precision(job)
    if requested == "fp16" and device.type != "cuda" and getattr(job, "precision", None) in (None, "auto"):
        log.warning("--use-half ignored on %s (fp16 matmuls are slow or unsupported there); running fp32", device)
        return "fp32"
    return runnable_precision(device, requested, "this narration")  # explicit fp16 off CUDA: a one-line error


def _progress(total: int, desc: str, enabled: bool):
    from lavila.progress import progress  # tqdm on a terminal, plain periodic lines in a log

    return progress(total=total, desc=desc, unit="clip", dynamic_ncols=True, enabled=enabled, smoothing=0.05)


# ---------------------------------------------------------------------------------------------------- metadata mode
class ClipDataset(Dataset):
    """Rows ``indices`` of the metadata as ``(index, video [3,T,H,W] | None, error | None)``; errors are returned,
    not raised, so one corrupt clip neither kills the job nor becomes a zero clip."""

    def __init__(self, rows: list, indices: list[int], root: str, transform: Any, clip_length: int,
                 chunk_len: int, fps: float) -> None:
        self.rows, self.indices, self.root = rows, indices, root
        self.transform, self.clip_length, self.chunk_len, self.fps = transform, clip_length, chunk_len, fps

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor | None, str | None]:
        from lavila.data.sampling import video_loader

        i = self.indices[k]
        uid, start, end = self.rows[i][:3]
        try:
            frames = video_loader(self.root, uid, start, end, chunk_len=self.chunk_len, fps=self.fps,
                                  clip_length=self.clip_length)
            return i, self.transform(frames).float(), None
        except DECODE_ERRORS as err:
            return i, None, f"{type(err).__name__}: {err}"


def _collate(items: list) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    ok = [(i, v) for i, v, e in items if e is None]
    failed = {i: e for i, _, e in items if e is not None}
    video = torch.stack([v for _, v in ok]) if ok else None
    return [i for i, _ in ok], video, failed


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class NarrateJob:
    """Narrate a metadata file (pseudo-labels) or your own videos (dense captions) with a narrator checkpoint.

    Everything a narration job needs (picklable, so submitit can ship it to SLURM tasks); ``lavila narrate`` fills
    it from the command line (``generation`` keys are flags without prefix: ``--num-return-sequences 10``).
    """

    checkpoint: str = option(help="narrator checkpoint (ours or a released VCLM .pth)")
    metadata: str | None = option(None, "metadata .pkl/.parquet of clips to narrate (metadata mode)")
    output_dir: str | None = option(None, "metadata mode: parts + merged output; video mode: .json/.srt files")
    videos: Positional[list[str]] = option(default_factory=list,
                                           help="video files or folders (searched recursively) to caption densely "
                                                "(video mode)")
    video_root: str = option(DEFAULT_VIDEO_ROOT, "Ego4D chunk root (metadata mode)")
    chunk_len: int = option(300, "chunk seconds; -1 = <root>/<uid>.mp4 whole files")
    fps: float = option(30, "frame rate of the chunks; -1 = read from the file")
    num_frames: int | None = option(None, "frames per clip (default: the checkpoint's)", positive=True)
    tokenizer: str | None = option(None, "local GPT-2 tokenizer folder (default: embedded or the HF hub name)")
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # decoding: the reference's defaults
    batch_size: int = option(64, "clips per forward pass", positive=True)
    num_workers: int = option(4, "decoding processes", min=0)
    part_size: int = option(256, "clips per atomic part file (work lost on a crash)", positive=True)
    # Above this fraction of failed clips the job aborts instead of merging a silently thinner output; 1 = never.
    max_failure_rate: float = option(0.05, "abort when more than this fraction of the clips fail to decode (0-1)",
                                     min=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "auto = bf16 autocast where the hardware has bf16 units (Ampere+ GPUs, AMX/AVX512-BF16 CPUs), fp32 "
        "elsewhere; bf16 = autocast over fp32 weights; fp16 = half weights and frames (CUDA only)")
    use_half: bool = option(False, "legacy spelling of --precision fp16 (fp16 model and frames, GPU)")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available)")
    seed: int = option(0, "sampling seed")
    overwrite: bool = option(False, "discard parts of a different earlier job in --output-dir")
    limit: int | None = option(None, "narrate at most this many clips in this run, then stop (resumable)",
                               positive=True)
    output_name: str | None = option(None, "stem of the merged files (default <metadata>.narrator.return_<R>)")
    # video mode
    every: str | None = option(None, "video mode: one caption every this long (1s, 0.5s, 500ms): windows of that "
                               "length (or --window) every that long")
    window: float | None = option(None, "video mode: window length in seconds (default 2, or --every)",
                                  positive=True)
    stride: float | None = option(None, "video mode: seconds between window starts (default 1)", positive=True)
    select: Literal["score", "central", "video"] = option(
        "score", "video mode: caption chosen among the candidates: score = lowest exp-entropy (most confident); "
        "central = highest mean text-embedding cosine to the other candidates; video = highest text-video "
        "similarity (both need --dual-encoder)")
    subject: Literal["keep", "strip", "camera-wearer", "someone"] = option(
        "keep", "video mode: keep the '#C C ...' wording, strip the # tags, write C as 'the camera wearer' and other "
        "people as 'someone' (camera-wearer), or everyone as 'someone'")
    merge_repeats: bool = option(False, "video mode: one segment for consecutive windows with the same caption")
    dual_encoder: str | None = option(None, "video mode: dual encoder (file, released name or URL) scoring the "
                                      "candidates for --select central/video")
    dual_encoder_tokenizer: str | None = option(None, "tokenizer files of --dual-encoder (default: its row's)")
    captions_file: str = option("captions.json", "video mode: the one-file export {video_id: [segments]} in "
                                "--output-dir ('' = none)")
    progress_every: float = option(30.0, "video mode: seconds between progress lines when stderr is not a terminal",
                                   positive=True)
    # SLURM via submitit (metadata mode)
    launcher: Literal["local", "submitit"] = option(
        "local", "local = run here (or under torchrun); submitit = submit to SLURM", aliases=("--submitit=submitit",
                                                                                             "--submit=submitit"))
    cluster: Literal["slurm", "local", "debug"] | None = option(
        None, "submitit cluster: slurm (default when available), local, debug")
    nodes: int = option(1, "SLURM nodes", positive=True)
    gpus_per_node: int = option(8, "SLURM GPUs (= tasks) per node", positive=True)
    partition: str | None = option(None, "SLURM partition")
    timeout_min: int = option(60 * 24, "SLURM time limit in minutes", positive=True)
    slurm_folder: str = option("submitit_logs/%j", "submitit logs ('%j' = job id)")

    def validate(self, where: Where) -> None:
        if bool(self.metadata) == bool(self.videos):
            raise ConfigError("give either --metadata (with --output-dir) or video files, not both/neither")
        if self.metadata and not self.output_dir:
            raise ConfigError(f"{where('output_dir')}: --metadata needs --output-dir")
        if self.every is not None:
            if self.stride is not None:
                raise ConfigError(f"{where('every')}: give --every or --stride, not both")
            try:
                parse_every(self.every)
            except ValueError as err:
                raise ConfigError(f"{where('every')}: {err}") from None
        if self.select != "score" and not self.dual_encoder:
            raise ConfigError(f"{where('select')}: --select {self.select} ranks candidates with a dual encoder; pass "
                              "--dual-encoder CKPT (or --select score)")
        if self.use_half and self.precision not in ("auto", "fp16"):
            raise ConfigError(f"{where('use_half')}: --use-half is --precision fp16, which contradicts --precision "
                              f"{self.precision}; drop one")
        if self.precision == "fp16" and self.device == "cpu":
            raise ConfigError(f"{where('precision')}: fp16 needs CUDA; on CPU use --precision bf16 or fp32")
        if not 0 <= self.max_failure_rate <= 1:
            raise ConfigError(f"{where('max_failure_rate')}: must be a fraction in [0, 1], got {self.max_failure_rate}")
        try:
            self.generation.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from err

    def merged_paths(self, out_dir: Path) -> tuple[Path, Path]:
        stem = self.output_name or f"{Path(self.metadata).stem}.narrator.return_{self.generation.num_return_sequences}"
        return out_dir / f"{stem}.pkl", out_dir / f"{stem}.parquet"

    def fingerprint(self, device: torch.device | None = None) -> dict[str, Any]:
        """What makes two runs the same job: the input, the model and everything that changes a narration.

        Not the video root (moving the videos, or mounting them elsewhere on another node, is the same job), nor
        batch size, workers, part size, limit or the failure threshold (they change how, not what). Precision is
        ``use_half`` (fp16) plus a ``precision`` key only for bf16 runs (on ``device``), so fp32 and fp16 jobs keep
        the fingerprints of earlier versions and their output folders still resume.
        """
        extra = {}
        if device is not None and effective_precision(device, requested_precision(self)) == "bf16":
            extra["precision"] = "bf16"
        return {**extra,
            "metadata": str(Path(self.metadata).resolve()), "metadata_sha1": _file_sha1(Path(self.metadata)),
            "checkpoint": str(Path(self.checkpoint).resolve()),
            "checkpoint_bytes": Path(self.checkpoint).stat().st_size,
            "chunk_len": self.chunk_len, "fps": self.fps,
            "num_frames": self.num_frames, "generation": asdict(self.generation),
            "use_half": requested_precision(self) == "fp16",
            "seed": self.seed,
        }


def parse_every(text: str) -> float:
    """Seconds of ``--every``: ``1s``, ``0.5s``, ``500ms``, ``2`` (seconds), ``1min``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?)?\s*", str(text))
    if not m:
        raise ValueError(f"--every {text!r}: expected a duration such as 1s, 0.5s, 500ms or 2")
    value, unit = float(m.group(1)), (m.group(2) or "s")
    seconds = value / 1000 if unit == "ms" else value * 60 if unit.startswith("m") else value
    if seconds <= 0:
        raise ValueError(f"--every {text!r}: must be positive")
    return seconds


def window_plan(job: NarrateJob) -> tuple[float, float]:
    """Video mode's (window, stride) seconds: ``--every T`` is one caption every T s over T-long windows
    (``--window`` may widen them); otherwise ``--window`` (2 s) every ``--stride`` (1 s)."""
    if job.every is not None:
        every = parse_every(job.every)
        return (job.window if job.window is not None else every), every
    return (job.window if job.window is not None else 2.0), (job.stride if job.stride is not None else 1.0)


# A config mistake (wrong --video-root, --chunk-len or --fps) fails every clip, and fast: stop after this many
# attempts with no success at all instead of "narrating" a million clips into failures. A partial failure rate is
# only judged against max_failure_rate at the end (corrupt videos come in runs of consecutive clips).
NOTHING_DECODES_AFTER = 100


def failure_report(failed: dict[int, str], rows: list, limit: int = 3) -> str:
    """``KIND xN (first: clip I, <uid> A-B s: <error>); ...`` for the ``limit`` most frequent error kinds: what a
    one-line abort message needs to say which files and why."""
    by_kind: dict[str, list[int]] = {}
    for i, why in sorted(failed.items()):
        by_kind.setdefault(why.split(":", 1)[0], []).append(i)
    worst = sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))[:limit]
    parts = []
    for kind, indices in worst:
        i = indices[0]
        uid, t0, t1 = rows[i][:3]
        why = failed[i].split(":", 1)[-1].strip()
        why = why if len(why) <= 160 else why[:157] + "..."
        parts.append(f"{kind} x{len(indices)} (first: clip {i}, {uid} {float(t0):.2f}-{float(t1):.2f} s: {why})")
    more = len(by_kind) - len(worst)
    return "; ".join(parts) + (f"; and {more} other kinds" if more > 0 else "")


def check_failure_rate(failed: dict[int, str], attempted: int, rows: list, max_rate: float, *,
                       final: bool) -> None:
    """Raise :class:`NarrateError` when the clips failed so far exceed the threshold (``final``: at the end of a run
    or before a merge), or when ``NOTHING_DECODES_AFTER`` clips were tried and none decoded (during a run, counting
    only clips never tried before). ``max_rate >= 1`` disables both."""
    if not failed or attempted <= 0 or max_rate >= 1:
        return
    rate = len(failed) / attempted
    if final and rate > max_rate:
        what = f"{len(failed)} of {attempted} clips failed ({rate:.1%} > max_failure_rate {max_rate:.1%})"
    elif not final and attempted >= NOTHING_DECODES_AFTER and len(failed) == attempted:
        what = f"none of the {attempted} clips tried so far could be read"
    else:
        return
    raise NarrateError(f"{what}: {failure_report(failed, rows)}. Check --video-root, --chunk-len and --fps, or "
                       "raise --max-failure-rate to accept them; a rerun retries every failed clip")


def narrate_metadata(job: NarrateJob, rank: int | None = None, world_size: int | None = None) -> dict[str, Any]:
    """Narrate this rank's share of the metadata rows; merge when the whole job is complete. Returns a summary.

    Pending are the rows of this rank without a result: never attempted, and failed in an earlier run (retried).
    Raises :class:`NarrateError` when too many clips failed (see :func:`check_failure_rate`): on one process at the
    end of every run, with several ranks only before the merge (a rank that stopped the others for its own share
    would have them killed by torchrun), and on any rank as soon as nothing decodes at all.
    """
    from lavila.dist import world_info_from_env
    from lavila.locks import output_lock

    info = world_info_from_env()
    rank = info.rank if rank is None else rank
    world_size = info.world_size if world_size is None else world_size
    # One job per output folder; ranks are independent processes writing it by design: one lock file per rank.
    with output_lock(job.output_dir, "lavila narrate", rank=rank):
        return _narrate_share(job, rank, world_size, info.local_rank)


def _narrate_share(job: NarrateJob, rank: int, world_size: int, local_rank: int) -> dict[str, Any]:
    """:func:`narrate_metadata`'s work, under the output folder's lock."""
    from lavila.data.metadata import load_metadata

    device = resolve_device(job.device, local_rank)
    rows = load_metadata(job.metadata)
    out_dir = Path(job.output_dir)
    shards = ShardedOutput(out_dir, total=len(rows), fingerprint=job.fingerprint(device),
                          ignored_keys=("video_root",))
    shards.open(overwrite=job.overwrite)
    succeeded, failed = shards.scan()  # the whole job's state (every rank's parts), kept up to date below
    pending = [i for i in assigned_indices(len(rows), rank, world_size) if i not in succeeded]
    if job.limit is not None:
        pending = pending[: job.limit]
    retried = {i for i in pending if i in failed}
    retrying = len(retried)
    summary: dict[str, Any] = {"rank": rank, "world_size": world_size, "total": len(rows), "narrated": 0,
                               "failed": 0, "pending_at_start": len(pending) - retrying, "retrying": retrying,
                               "merged": None}
    if pending:
        model, tokenizer = _load_model(job, device)
        dataset = ClipDataset(rows, pending, job.video_root, clip_transform(model), model.config.vision.num_frames,
                              job.chunk_len, job.fps)
        loader = DataLoader(dataset, batch_size=job.batch_size, num_workers=job.num_workers, collate_fn=_collate,
                            pin_memory=device.type == "cuda")
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
        new_failed: dict[int, str] = {}  # failures of clips never attempted before (retries are expected to fail)
        new_attempted = 0
        bar = _progress(len(pending), f"narrate rank {rank}/{world_size}", enabled=rank == 0)
        start = time.perf_counter()

        def flush() -> None:
            if results or failures:
                shards.write_part(dict(results), dict(failures), rank=rank)
                results.clear()
                failures.clear()

        # warnings about corrupt clips print above the progress bar instead of through it
        with logging_redirect_tqdm():
            try:
                for indices, video, batch_failed in loader:
                    for i, why in batch_failed.items():
                        uid, t0, t1 = rows[i][:3]
                        log.warning("clip %d (%s %.2f-%.2f s) skipped: %s", i, uid, t0, t1, why)
                        failures[i] = failed[i] = why
                        if i not in retried:
                            new_failed[i] = why
                        summary["failed"] += 1
                    if video is not None:
                        generators = [clip_generator(job.seed, i) for i in indices]
                        narrated = narrate_batch(model, tokenizer, video, job.generation, generators=generators)
                        for i, (texts, scores) in zip(indices, narrated):
                            uid, t0, t1 = rows[i][:3]
                            results[i] = [uid, t0, t1, texts, scores]
                            succeeded.add(i)
                            failed.pop(i, None)
                        summary["narrated"] += len(indices)
                    bar.update(len(indices) + len(batch_failed))
                    bar.set_postfix(failed=summary["failed"])
                    if len(results) + len(failures) >= job.part_size:
                        flush()
                    new_attempted += sum(i not in retried for i in (*indices, *batch_failed))
                    check_failure_rate(new_failed, new_attempted, rows, job.max_failure_rate, final=False)
            finally:
                flush()  # whatever finished before an interrupt or an abort is kept
                bar.close()
        summary["seconds"] = time.perf_counter() - start
        if world_size == 1:
            check_failure_rate(failed, len(succeeded) + len(failed), rows, job.max_failure_rate, final=True)
    if shards.is_complete():
        paths, n_rows, n_failed = merge_outputs(job, shards, rows)
        summary.update(merged=[str(p) for p in paths], merged_rows=n_rows, failed_total=n_failed)
    return summary


def merge_outputs(job: NarrateJob, shards: ShardedOutput,
                  rows: list | None = None) -> tuple[tuple[Path, Path, Path], int, int]:
    """Verified merge of all parts into the reference pickle, Parquet and ``failures.json`` (+ row counts).

    With the metadata ``rows``, refuses (:class:`NarrateError`, nothing written) when the failed clips exceed
    ``job.max_failure_rate`` of the job, and names each failed clip's video and window in ``failures.json``.
    """
    from lavila.atomic import atomic_write_text
    from lavila.data.metadata import save_metadata

    results, failures = shards.collect()
    if rows is not None:
        check_failure_rate(failures, shards.total, rows, job.max_failure_rate, final=True)
    merged = [(r[0], r[1], r[2], list(r[3]), [float(s) for s in r[4]]) for r in results.values()]
    pkl, parquet = job.merged_paths(shards.out_dir)
    save_metadata(merged, pkl)
    failpoint("narrate.merge_written", pkl.name)
    save_metadata(merged, parquet)
    failpoint("narrate.merge_written", parquet.name)
    fail_path = shards.out_dir / "failures.json"
    listed = []
    for i, why in failures.items():
        entry: dict[str, Any] = {"index": i, "error": why}
        if rows is not None:
            entry.update(video_uid=rows[i][0], start=rows[i][1], end=rows[i][2])
        listed.append(entry)
    atomic_write_text(fail_path, json.dumps(listed, indent=1))
    failpoint("narrate.merge_written", fail_path.name)
    return (pkl, parquet, fail_path), len(merged), len(failures)


def _submit(job: NarrateJob) -> int:
    from lavila.train.launch import make_executor  # the one submitit launcher (same local/debug rules as training)

    params: dict[str, Any] = {"timeout_min": job.timeout_min, "name": "lavila-narrate", "nodes": job.nodes,
                              "tasks_per_node": job.gpus_per_node, "gpus_per_node": job.gpus_per_node,
                              "cpus_per_task": job.num_workers + 1, "mem_gb": 55 * job.gpus_per_node}
    if job.partition:
        params["slurm_partition"] = job.partition
    executor = make_executor(job.slurm_folder, job.cluster, params)
    submitted = executor.submit(_SubmititTask(job))
    print(f"submitted job {submitted.job_id}; logs in {job.slurm_folder}")
    if executor.cluster == "debug":
        print(json.dumps(submitted.result()))
    return 0


class _SubmititTask:
    """Runs on every SLURM task; rank/world come from the SLURM environment, requeued on pre-emption."""

    def __init__(self, job: NarrateJob) -> None:
        self.job = job

    def __call__(self) -> dict[str, Any]:
        import submitit

        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # not inside a submitit job (debug executor)
            return narrate_metadata(self.job)
        if env.num_tasks > 1:  # RANK/LOCAL_RANK for every task, SLURM or local: one GPU per task
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return narrate_metadata(self.job, env.global_rank, env.num_tasks)

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(_SubmititTask(self.job))


# ------------------------------------------------------------------------------------------------------- video mode
@dataclass
class Window:
    start: float
    end: float
    frame_ids: list[int]


def sliding_windows(num_frames_video: int, fps: float, window: float, stride: float, clip_length: int) -> list[Window]:
    """Windows ``[k*stride, k*stride + window]`` that fit in the video, plus one window ending at the video's end if
    the tail is not covered (a single shorter window if the whole video is shorter); each is read as
    ``clip_length`` segment-midpoint frames, the training sampler (``get_frame_ids``)."""
    from lavila.data.sampling import get_frame_ids, window_bounds

    out: list[Window] = []
    for start, end in window_bounds(num_frames_video / fps, window, stride):
        a = min(int(round(start * fps)), num_frames_video - 1)
        b = max(min(int(round(end * fps)), num_frames_video), a + 1)
        ids = [min(i, num_frames_video - 1) for i in get_frame_ids(a, b, clip_length)]
        out.append(Window(start, end, ids))
    return out


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(windows: list[dict[str, Any]], stride: float) -> str:
    """One cue per window (or segment) with its ``caption``, else its most confident candidate (lowest score); a
    cue lasts until the next one starts (overlapping cues display badly), the last one until its window ends."""
    lines = []
    cues = [w for w in windows if w.get("captions") or isinstance(w.get("caption"), str)]
    for n, w in enumerate(cues, 1):
        end = min(w["end"], cues[n]["start"]) if n < len(cues) else w["end"]
        # a chosen caption (a segment of lavila.narrate.captions) wins over the most confident candidate
        text = w["caption"] if isinstance(w.get("caption"), str) else min(w["captions"],
                                                                          key=lambda c: c["score"])["text"]
        lines += [str(n), f"{_srt_time(w['start'])} --> {_srt_time(end)}", text.strip() or "…", ""]
    return "\n".join(lines)


def narrate_video(path: Path, model: Any, tokenizer: Any, gen: GenerationConfig, window: float, stride: float,
                  batch_size: int, generator: torch.Generator | None = None,
                  seed: int | None = None) -> dict[str, Any]:
    """Dense captions of one video; raises ``VideoDecodeError`` if it cannot be opened at all.

    With ``seed``, each window samples from its own generator (video name + window start), so its captions do not
    depend on ``batch_size`` or on the other videos of the run; otherwise ``generator`` is one shared stream.
    """
    from lavila.data.decode import open_video

    transform = clip_transform(model)
    reader = open_video(path)
    n, fps = len(reader), float(reader.fps)
    if n == 0:
        raise ValueError(f"{path}: no frames")
    windows = sliding_windows(n, fps, window, stride, model.config.vision.num_frames)
    out: list[dict[str, Any]] = []
    for chunk in batched(list(range(len(windows))), batch_size):
        clips, ok = [], []
        for k in chunk:
            w = windows[k]
            entry = {"start": round(w.start, 3), "end": round(w.end, 3), "frame_ids": w.frame_ids}
            out.append(entry)
            try:
                clips.append(transform(reader.get_frames(w.frame_ids)).float())
                ok.append(entry)
            except DECODE_ERRORS as err:
                entry["error"] = f"{type(err).__name__}: {err}"
                log.warning("%s window %.2f-%.2f s skipped: %s", path, w.start, w.end, entry["error"])
        if clips:
            generators = None if seed is None else [clip_generator(seed, f"{path.name}@{e['start']}") for e in ok]
            for entry, (texts, scores) in zip(ok, narrate_batch(model, tokenizer, torch.stack(clips), gen,
                                                                generator, generators)):
                entry["captions"] = [{"text": t, "score": s} for t, s in zip(texts, scores)]
    return {"video": str(path), "fps": fps, "num_frames": n, "duration": n / fps, "window": window,
            "stride": stride, "windows": out}


# --------------------------------------------------------------------------------------------------------------- CLI
def run_metadata(job: NarrateJob) -> int:
    """Metadata mode of ``lavila narrate`` (the verb's entry, :func:`lavila.narrate.library.run_narrate`, sends video
    mode to the library runner, which sits above this module)."""
    from lavila.models.hub import resolve_checkpoint

    if job.videos:
        raise LavilaError("video mode runs through lavila.narrate.library.run_narrate", exit_code=2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job.checkpoint = str(resolve_checkpoint(job.checkpoint))  # a file, a released name or a URL (cached)
    if job.launcher == "submitit":
        return _submit(job)
    summary = narrate_metadata(job)
    print(json.dumps(summary))
    if summary["merged"]:
        print(f"merged {summary['merged_rows']} narrated clips ({summary['failed_total']} undecodable clips listed "
              f"in failures.json) -> {', '.join(summary['merged'])}")
        if summary["failed_total"]:
            print(f"lavila narrate: {summary['failed_total']} of {summary['total']} clips failed (listed in "
                  f"{Path(job.output_dir) / 'failures.json'}); rerun the same command to retry them", file=sys.stderr)
            return 1
        return 0
    print("not all clips are done yet (other ranks, --limit or an interruption): rerun the same command to "
          "continue; the merge happens when every clip is done", file=sys.stderr)
    if summary["failed"] and summary["world_size"] == 1:
        # Several ranks exit 0 here: a rank that fails under torchrun makes it kill the others mid-work; the rank
        # that merges reports every failure of the job.
        print(f"lavila narrate: {summary['failed']} of {summary['failed'] + summary['narrated']} clips of this run "
              "failed; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0
