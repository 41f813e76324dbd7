"""`lavila narrate`: run a narrator over a metadata file (pseudo-labels) or over your own videos (dense captions).

Metadata mode (the reference's ``main_infer_narrator.py``)::

    lavila narrate --metadata ego4d_train.pkl --checkpoint vclm.pth --output-dir out/ [--use-half]
    torchrun --nproc_per_node=8 -m lavila.cli narrate --metadata ... --output-dir out/      # one node, 8 GPUs
    lavila narrate --metadata ... --output-dir out/ --submitit --nodes 4 --gpus-per-node 8  # SLURM

Rank ``r`` of ``W`` narrates rows ``r, r+W, ...``; results go to small atomic part files (``lavila.narrate.shards``)
so an interrupted or pre-empted run resumes where it stopped by rerunning the same command. When every row is done
the parts are merged into the reference's pickle of 5-tuples ``(video_uid, start, end, [texts], [scores])`` plus the
same rows as Parquet. A clip that cannot be decoded is reported in ``failures.json`` and counted; it is never
narrated from zeros and is left out of the merged files.

Video mode::

    lavila narrate clip1.mp4 clip2.mkv --checkpoint vclm.pth --window 2.0 --stride 1.0 --output-dir captions/

captions every window of ``--window`` seconds, every ``--stride`` seconds (``num_frames`` frames spread over the
window, as in training), ``--num-return-sequences`` candidates each, written as ``<video>.json`` (all candidates
with scores) and ``<video>.srt`` (the most confident candidate, i.e. the lowest exp-entropy score).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.contrib.logging import logging_redirect_tqdm

from lavila.narrate.generate import GenerationConfig, decode_one, generate
from lavila.narrate.shards import ShardedOutput, batched

log = logging.getLogger(__name__)

DEFAULT_VIDEO_ROOT = "datasets/Ego4D/video_5min_chunks_288px/"
DECODE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, IndexError)


# --------------------------------------------------------------------------------------------------- shared helpers
def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def clip_transform(model: Any):
    """The model row's eval transform (Resize -> CenterCrop -> Normalize in float), the one every verb uses."""
    from lavila.models import model_transforms

    return model_transforms(model)[1]


def narrate_batch(model: Any, tokenizer: Any, video: torch.Tensor, gen: GenerationConfig,
                  generator: torch.Generator | None = None) -> list[tuple[list[str], list[float]]]:
    """Captions for a batch of clips ``[B, 3, T, H, W]``: per clip, R texts and their scores."""
    with torch.inference_mode():
        param = next(model.parameters())
        tokens = model.encode_image(video.to(device=param.device, dtype=param.dtype))
        out = generate(model, tokens, gen, generator=generator)
    R = gen.num_return_sequences
    texts = [decode_one(row, tokenizer, model.bos_token_id, model.eos_token_id) for row in out.ids.cpu()]
    scores = out.scores.float().cpu().tolist()
    return [(texts[b * R:(b + 1) * R], scores[b * R:(b + 1) * R]) for b in range(video.shape[0])]


def generation_config_from_args(args: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(
        strategy=args.strategy, max_len=args.max_len, temperature=args.temperature, top_k=args.top_k or None,
        top_p=args.top_p, num_return_sequences=args.num_return_sequences, early_stopping=args.early_stop,
        num_beams=args.num_beams, length_penalty=args.length_penalty, use_cache=not args.no_cache,
    )


def _load_model(args: argparse.Namespace, device: torch.device):
    from lavila.narrate.loading import load_narrator

    model, tokenizer, _ = load_narrator(args.checkpoint, device, tokenizer=args.tokenizer,
                                        num_frames=args.num_frames)
    if args.use_half:
        if device.type == "cpu":
            log.warning("--use-half ignored on CPU (fp16 matmuls are slow or unsupported there); running fp32")
        else:
            model.half()
    return model, tokenizer


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip", dynamic_ncols=True, disable=not enabled, smoothing=0.05)


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
    """Everything a metadata narration job needs (picklable, so submitit can ship it to SLURM tasks)."""

    metadata: str
    checkpoint: str
    output_dir: str
    video_root: str = DEFAULT_VIDEO_ROOT
    chunk_len: int = 300
    fps: float = 30
    num_frames: int | None = None
    tokenizer: str | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    batch_size: int = 64
    num_workers: int = 4
    part_size: int = 256
    use_half: bool = False
    device: str | None = None
    seed: int = 0
    overwrite: bool = False
    limit: int | None = None  # stop after this many clips in this run (the job stays resumable)
    output_name: str | None = None

    def merged_paths(self, out_dir: Path) -> tuple[Path, Path]:
        stem = self.output_name or f"{Path(self.metadata).stem}.narrator.return_{self.generation.num_return_sequences}"
        return out_dir / f"{stem}.pkl", out_dir / f"{stem}.parquet"

    def fingerprint(self) -> dict[str, Any]:
        return {
            "metadata": str(Path(self.metadata).resolve()), "metadata_sha1": _file_sha1(Path(self.metadata)),
            "checkpoint": str(Path(self.checkpoint).resolve()),
            "checkpoint_bytes": Path(self.checkpoint).stat().st_size,
            "video_root": str(Path(self.video_root).resolve()), "chunk_len": self.chunk_len, "fps": self.fps,
            "num_frames": self.num_frames, "generation": asdict(self.generation), "use_half": self.use_half,
            "seed": self.seed,
        }


def narrate_metadata(job: NarrateJob, rank: int | None = None, world_size: int | None = None) -> dict[str, Any]:
    """Narrate this rank's share of the metadata rows; merge when the whole job is complete. Returns a summary."""
    from lavila.data.metadata import load_metadata
    from lavila.dist import world_info_from_env

    info = world_info_from_env()
    rank = info.rank if rank is None else rank
    world_size = info.world_size if world_size is None else world_size
    device = pick_device(job.device, info.local_rank)
    rows = load_metadata(job.metadata)
    out_dir = Path(job.output_dir)
    shards = ShardedOutput(out_dir, total=len(rows), fingerprint=job.fingerprint())
    shards.open(overwrite=job.overwrite)
    pending = shards.pending(rank, world_size)
    if job.limit is not None:
        pending = pending[: job.limit]
    summary: dict[str, Any] = {"rank": rank, "world_size": world_size, "total": len(rows), "narrated": 0,
                               "failed": 0, "pending_at_start": len(pending), "merged": None}
    if pending:
        model, tokenizer = _load_model(argparse.Namespace(checkpoint=job.checkpoint, tokenizer=job.tokenizer,
                                                          num_frames=job.num_frames, use_half=job.use_half), device)
        dataset = ClipDataset(rows, pending, job.video_root, clip_transform(model), model.config.vision.num_frames,
                              job.chunk_len, job.fps)
        loader = DataLoader(dataset, batch_size=job.batch_size, num_workers=job.num_workers, collate_fn=_collate,
                            pin_memory=device.type == "cuda")
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
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
                for indices, video, failed in loader:
                    for i, why in failed.items():
                        uid, t0, t1 = rows[i][:3]
                        log.warning("clip %d (%s %.2f-%.2f s) skipped: %s", i, uid, t0, t1, why)
                        failures[i] = why
                        summary["failed"] += 1
                    if video is not None:
                        gen = torch.Generator(device=device).manual_seed(job.seed * 1_000_003 + indices[0])
                        narrated = narrate_batch(model, tokenizer, video, job.generation, gen)
                        for i, (texts, scores) in zip(indices, narrated):
                            uid, t0, t1 = rows[i][:3]
                            results[i] = [uid, t0, t1, texts, scores]
                        summary["narrated"] += len(indices)
                    bar.update(len(indices) + len(failed))
                    bar.set_postfix(failed=summary["failed"])
                    if len(results) + len(failures) >= job.part_size:
                        flush()
            finally:
                flush()  # whatever finished before an interrupt is kept
                bar.close()
        summary["seconds"] = time.perf_counter() - start
    if shards.is_complete():
        paths, n_rows, n_failed = merge_outputs(job, shards)
        summary.update(merged=[str(p) for p in paths], merged_rows=n_rows, failed_total=n_failed)
    return summary


def merge_outputs(job: NarrateJob, shards: ShardedOutput) -> tuple[tuple[Path, Path, Path], int, int]:
    """Verified merge of all parts into the reference pickle, Parquet and ``failures.json`` (+ row counts)."""
    from lavila.atomic import atomic_write_text
    from lavila.data.metadata import save_metadata

    results, failures = shards.collect()
    rows = [(r[0], r[1], r[2], list(r[3]), [float(s) for s in r[4]]) for r in results.values()]
    pkl, parquet = job.merged_paths(shards.out_dir)
    save_metadata(rows, pkl)
    save_metadata(rows, parquet)
    fail_path = shards.out_dir / "failures.json"
    atomic_write_text(fail_path, json.dumps([{"index": i, "error": e} for i, e in failures.items()], indent=1))
    return (pkl, parquet, fail_path), len(rows), len(failures)


def _submit(job: NarrateJob, args: argparse.Namespace) -> int:
    import submitit

    executor = submitit.AutoExecutor(folder=args.slurm_folder, cluster=args.cluster)
    params: dict[str, Any] = {"timeout_min": args.timeout_min, "name": "lavila-narrate"}
    if executor.cluster == "slurm":
        params.update(nodes=args.nodes, tasks_per_node=args.gpus_per_node, gpus_per_node=args.gpus_per_node,
                      cpus_per_task=args.num_workers + 1, mem_gb=55 * args.gpus_per_node)
        if args.partition:
            params["slurm_partition"] = args.partition
    executor.update_parameters(**params)
    submitted = executor.submit(_SubmititTask(job))
    print(f"submitted job {submitted.job_id}; logs in {args.slurm_folder}")
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
            return narrate_metadata(self.job, env.global_rank, env.num_tasks)
        except RuntimeError:  # not inside a submitit job (debug executor)
            return narrate_metadata(self.job)

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
    from lavila.data.sampling import get_frame_ids

    if window <= 0 or stride <= 0:
        raise ValueError(f"--window and --stride must be positive, got {window} and {stride}")
    duration = num_frames_video / fps
    if duration <= window:
        starts = [0.0]
    else:
        starts = []
        while len(starts) * stride + window <= duration + 1e-6:
            starts.append(len(starts) * stride)
        if starts[-1] + window < duration - 1e-6:  # cover the tail with one window aligned to the end
            starts.append(duration - window)
    out: list[Window] = []
    for start in starts:
        end = min(start + window, duration)
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
    """One cue per window with its most confident caption (lowest score); a cue lasts until the next window starts
    (overlapping cues display badly), the last one until its window ends."""
    lines = []
    cues = [w for w in windows if w.get("captions")]
    for n, w in enumerate(cues, 1):
        end = min(w["end"], cues[n]["start"]) if n < len(cues) else w["end"]
        best = min(w["captions"], key=lambda c: c["score"])
        lines += [str(n), f"{_srt_time(w['start'])} --> {_srt_time(end)}", best["text"].strip() or "…", ""]
    return "\n".join(lines)


def narrate_video(path: Path, model: Any, tokenizer: Any, gen: GenerationConfig, window: float, stride: float,
                  batch_size: int, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Dense captions of one video; raises ``VideoDecodeError`` if it cannot be opened at all."""
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
            for entry, (texts, scores) in zip(ok, narrate_batch(model, tokenizer, torch.stack(clips), gen,
                                                                generator)):
                entry["captions"] = [{"text": t, "score": s} for t, s in zip(texts, scores)]
    return {"video": str(path), "fps": fps, "num_frames": n, "duration": n / fps, "window": window,
            "stride": stride, "windows": out}


def run_videos(args: argparse.Namespace) -> int:
    from lavila.atomic import atomic_write_text, remove_stale_temps

    device = pick_device(args.device)
    model, tokenizer = _load_model(args, device)
    gen = generation_config_from_args(args)
    out_dir = Path(args.output_dir or ".")
    remove_stale_temps(out_dir, [f"{Path(v).stem}.{ext}" for v in args.videos for ext in ("json", "srt")])
    failed = 0
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for path in args.videos:
        path = Path(path)
        try:
            result = narrate_video(path, model, tokenizer, gen, args.window, args.stride, args.batch_size, generator)
        except DECODE_ERRORS as err:
            print(f"FAILED {path}: {err}", file=sys.stderr)
            failed += 1
            continue
        bad = sum("error" in w for w in result["windows"])
        failed += bad > 0
        atomic_write_text(out_dir / f"{path.stem}.json", json.dumps(result, indent=1, ensure_ascii=False))
        atomic_write_text(out_dir / f"{path.stem}.srt", to_srt(result["windows"], args.stride))
        print(f"{path}: {len(result['windows']) - bad} windows captioned"
              + (f", {bad} failed to decode" if bad else "") + f" -> {out_dir / path.stem}.json/.srt")
        for w in result["windows"][:3]:
            if w.get("captions"):
                print(f"  [{w['start']:.1f}-{w['end']:.1f}s] {min(w['captions'], key=lambda c: c['score'])['text']}")
    if failed:
        print(f"{failed} of {len(args.videos)} videos had decode failures (see messages above)", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="*", help="video files to caption densely (video mode)")
    parser.add_argument("--checkpoint", required=True, help="narrator checkpoint (ours or a released VCLM .pth)")
    parser.add_argument("--metadata", help="metadata .pkl/.parquet of clips to narrate (metadata mode)")
    parser.add_argument("--output-dir", help="metadata mode: parts + merged output; video mode: .json/.srt files")
    parser.add_argument("--output-name", help="stem of the merged files (default <metadata>.narrator.return_<R>)")
    parser.add_argument("--tokenizer", help="local GPT-2 tokenizer folder (default: embedded or the HF hub name)")
    parser.add_argument("--video-root", default=DEFAULT_VIDEO_ROOT, help="Ego4D chunk root (metadata mode)")
    parser.add_argument("--chunk-len", type=int, default=300, help="chunk seconds; -1 = <root>/<uid>.mp4 whole files")
    parser.add_argument("--fps", type=float, default=30, help="frame rate of the chunks; -1 = read from the file")
    parser.add_argument("--num-frames", type=int, help="frames per clip (default: the checkpoint's)")
    g = parser.add_argument_group("decoding (defaults: the reference's inference settings)")
    g.add_argument("--strategy", choices=["sample", "greedy", "beam"], default="sample")
    g.add_argument("--num-return-sequences", type=int, default=10)
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-len", type=int, default=77, help="max caption length in tokens, BOS included")
    g.add_argument("--early-stop", action="store_true", help="stop once every sequence emitted EOS")
    g.add_argument("--num-beams", type=int, default=1)
    g.add_argument("--length-penalty", type=float, default=1.0)
    g.add_argument("--no-cache", action="store_true", help="recompute the whole prefix each step (reference speed)")
    g.add_argument("--seed", type=int, default=0)
    r = parser.add_argument_group("running")
    r.add_argument("--batch-size", type=int, default=64, help="clips per forward pass")
    r.add_argument("--num-workers", type=int, default=4, help="decoding processes")
    r.add_argument("--part-size", type=int, default=256, help="clips per atomic part file (work lost on a crash)")
    r.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available)")
    r.add_argument("--use-half", action="store_true", help="fp16 model and frames (GPU)")
    r.add_argument("--overwrite", action="store_true", help="discard parts of a different earlier job in --output-dir")
    r.add_argument("--limit", type=int, help="narrate at most this many clips in this run, then stop (resumable)")
    v = parser.add_argument_group("video mode")
    v.add_argument("--window", type=float, default=2.0, help="window length in seconds")
    v.add_argument("--stride", type=float, default=1.0, help="seconds between window starts")
    s = parser.add_argument_group("SLURM via submitit (metadata mode)")
    s.add_argument("--submitit", action="store_true", help="submit to SLURM instead of running here")
    s.add_argument("--cluster", default=None, help="submitit cluster: slurm (default when available), local, debug")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=8)
    s.add_argument("--partition", help="SLURM partition")
    s.add_argument("--timeout-min", type=int, default=60 * 24)
    s.add_argument("--slurm-folder", default="submitit_logs/%j")


def job_from_args(args: argparse.Namespace) -> NarrateJob:
    return NarrateJob(
        metadata=args.metadata, checkpoint=args.checkpoint, output_dir=args.output_dir, video_root=args.video_root,
        chunk_len=args.chunk_len, fps=args.fps, num_frames=args.num_frames, tokenizer=args.tokenizer,
        generation=generation_config_from_args(args), batch_size=args.batch_size, num_workers=args.num_workers,
        part_size=args.part_size, use_half=args.use_half, device=args.device, seed=args.seed,
        overwrite=args.overwrite, limit=args.limit, output_name=args.output_name,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not Path(args.checkpoint).is_file():
        print(f"narrate: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    if bool(args.metadata) == bool(args.videos):
        print("narrate: give either --metadata (with --output-dir) or video files, not both/neither", file=sys.stderr)
        return 2
    try:
        generation_config_from_args(args).validate()
    except ValueError as err:
        print(f"narrate: {err}", file=sys.stderr)
        return 2
    if args.videos:
        return run_videos(args)
    if not args.output_dir:
        print("narrate: --metadata needs --output-dir", file=sys.stderr)
        return 2
    job = job_from_args(args)
    if args.submitit:
        return _submit(job, args)
    summary = narrate_metadata(job)
    print(json.dumps(summary))
    if summary["merged"]:
        print(f"merged {summary['merged_rows']} narrated clips ({summary['failed_total']} undecodable clips listed "
              f"in failures.json) -> {', '.join(summary['merged'])}")
    else:
        print("not all clips are done yet (other ranks, --limit or an interruption): rerun the same command to "
              "continue; the merge happens when every clip is done", file=sys.stderr)
    return 0
