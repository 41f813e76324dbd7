"""``lavila narrate DIR_OR_FILES...``: dense captions for a whole video library, resumable, sharded, batched.

What a run does:

1. **Library**: every video of the folders given (recursively, by extension; the same list ``lavila index``
   reads) and every file given. A video's id is its path relative to the folder given, without the extension
   (``kitchen/day1``), or the stem of a file given directly; outputs mirror the ids (``OUT/kitchen/day1.json``).
   Two videos with one id (``a.mp4`` and ``a.mkv``) are refused before any work.
2. **Shard**: rank ``r`` of ``W`` (torchrun / SLURM environment, :mod:`lavila.dist`) takes videos ``r, r+W, ...``;
   no process group is needed.
3. **Resume**: a video is done when ``OUT/<id>.json`` exists and was written by the same job (checkpoint, decoding
   settings, seed, window plan: the ``job`` key). Finished windows of an unfinished video are kept in small atomic
   part files (``OUT/.parts/<id>.NNNNN.part``, written every ``--part-size`` windows), so a killed run loses at
   most that many windows and a rerun of the same command narrates only what is missing. Windows that failed to
   decode are retried by a rerun. An output folder of another job is refused (``--overwrite`` starts over).
4. **Batch across videos**: the windows of all pending videos form one stream, decoded by ``--num-workers``
   processes (each takes whole videos) and cut into batches of ``--batch-size`` windows whatever video they come
   from, so a library of 3-minute videos keeps the device as busy as one long video. Each window samples from
   its own generator (seed + video file name + window start), so captions do not depend on batching, on the other
   videos or on where a run was resumed.
5. **Outputs** per video, each written atomically when its last window is done: ``<id>.json`` (every window,
   every candidate with its score, the chosen ``caption``), ``<id>.srt`` and ``<id>.txt`` (one ``t: caption``
   line per segment); when every video of the library is done or failed, one export ``captions.json``:
   ``{video_id: [{"start", "end", "caption", "candidates", "score"}]}``, what video-QA pipelines (LLoVi,
   VideoTree, ...) read. The chosen caption, the subject wording and merged repeats come from
   :mod:`lavila.narrate.captions`; they are re-applied to finished videos on every run, so changing ``--subject``
   re-renders without narrating again.
6. **Progress** over the whole library (windows, videos, windows/s, ETA): a tqdm bar on a terminal, a plain line
   every ``--progress-every`` seconds otherwise (logs of batch jobs). At the end, a summary: what was written,
   the throughput, and every video that failed (unreadable file, or windows that failed to decode) with the
   reason, also in ``failures.json``; the exit code is 1 when any failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lavila.errors import LavilaError
from lavila.failpoints import failpoint
from lavila.narrate import captions as cap
from lavila.narrate.narrate import (
    DECODE_ERRORS,
    NarrateJob,
    Window,
    clip_generator,
    clip_transform,
    narrate_batch,
    parse_every,
    sliding_windows,
    to_srt,
    window_plan,
)

log = logging.getLogger(__name__)

PARTS_DIR = ".parts"
DOC_FORMAT = 2  # 1: the first video mode (no job key, no chosen caption)
_PART = re.compile(r"^(?P<stem>.+)\.(?P<seq>\d{5})\.part$")


class LibraryError(LavilaError):
    """A library run that cannot start (no videos, clashing ids, an output folder of another job)."""


# -------------------------------------------------------------------------------------------------------- library
@dataclass
class LibraryVideo:
    """One video of the library: its position (sharding), file and id (output names)."""

    index: int
    path: Path
    video_id: str

    def output(self, out_dir: Path, suffix: str) -> Path:
        return out_dir / f"{self.video_id}{suffix}"

    def parts_folder(self, out_dir: Path) -> Path:
        return (out_dir / PARTS_DIR / self.video_id).parent

    @property
    def stem(self) -> str:
        return Path(self.video_id).name


def collect_videos(inputs: Sequence[str | Path]) -> list[LibraryVideo]:
    """The library of ``inputs`` (folders searched recursively, files taken as given), in a fixed order.

    Folders list their videos sorted by path, after the inputs before them; a file given twice (or inside a folder
    also given) is kept once. A path that does not exist is kept as a video (it is reported as failed, as a
    typo'd file must be), a folder without videos is an error.
    """
    from lavila.eval.search import VIDEO_EXTENSIONS, find_videos

    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            videos = find_videos(p)
            if not videos:
                raise LibraryError(f"no videos under {p} (extensions: {' '.join(sorted(VIDEO_EXTENSIONS))})",
                                   exit_code=2)
            items = [(v, v.relative_to(p).with_suffix("").as_posix()) for v in videos]
        else:
            items = [(p, p.stem)]
        for path, vid in items:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append((path, vid))
    by_id: dict[str, Path] = {}
    for path, vid in found:
        if vid in by_id:
            raise LibraryError(f"two videos would write the same outputs {vid}.json: {by_id[vid]} and {path}; "
                               "rename one or narrate them into different --output-dir", exit_code=2)
        by_id[vid] = path
    return [LibraryVideo(i, path, vid) for i, (path, vid) in enumerate(found)]


def job_fingerprint(job: NarrateJob, window: float, stride: float,
                    device: torch.device | None = None) -> dict[str, Any]:
    """What makes two runs narrate a window identically: model, frames, decoding, precision, seed and window plan.

    Not the selection, subject wording or merging (applied afterwards, from the stored candidates), nor batch
    size, workers or part size (how, not what). Precision as metadata mode records it: ``use_half`` (fp16), plus
    ``precision: bf16`` for a bf16 run on ``device``.
    """
    from lavila.dist import effective_precision
    from lavila.narrate.narrate import requested_precision

    ckpt = Path(job.checkpoint)
    extra = {}
    if device is not None and effective_precision(device, requested_precision(job)) == "bf16":
        extra["precision"] = "bf16"
    return {"checkpoint": str(ckpt.resolve()), "checkpoint_bytes": ckpt.stat().st_size if ckpt.exists() else None,
            "num_frames": job.num_frames, "generation": asdict(job.generation),
            "use_half": requested_precision(job) == "fp16", **extra, "seed": job.seed, "window": window,
            "stride": stride}


# -------------------------------------------------------------------------------------------------- video state
@dataclass
class VideoState:
    """What is known of one video before this run narrates it."""

    video: LibraryVideo
    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # window index -> entry, from doc and parts
    doc: dict[str, Any] | None = None  # the finished <id>.json of this job, if any
    parts: list[Path] = field(default_factory=list)
    next_seq: int = 0
    # planned when pending
    windows: list[Window] | None = None
    de_windows: list[Window] | None = None
    fps: float | None = None
    num_frames: int | None = None
    error: str | None = None  # the file could not be opened
    failed: dict[int, str] = field(default_factory=dict)  # window index -> decode error, this run

    @property
    def finished(self) -> bool:
        """Done by the same job, with every window captioned (failed windows are retried)."""
        return self.doc is not None and not any("error" in w for w in self.doc["windows"])


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _dual_id(job: NarrateJob) -> dict[str, Any] | None:
    if not job.dual_encoder:
        return None
    p = Path(job.dual_encoder)
    return {"checkpoint": str(p.resolve()), "bytes": p.stat().st_size if p.is_file() else None}


def load_state(video: LibraryVideo, out_dir: Path, fp: dict[str, Any], dual: dict[str, Any] | None, *,
               overwrite: bool) -> VideoState:
    """The finished document and part files of ``video``; another job's are refused (or discarded with
    ``overwrite``). Windows scored by another dual encoder (or none) when one is asked for count as not done."""
    state = VideoState(video)
    doc_path = video.output(out_dir, ".json")
    folder = video.parts_folder(out_dir)
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            m = _PART.match(p.name)
            if m and m["stem"] == video.stem:
                state.parts.append(p)
                state.next_seq = max(state.next_seq, int(m["seq"]) + 1)
    sources: list[tuple[str, dict[str, Any], bool]] = []  # (where, body, is the finished document)
    if doc_path.is_file():
        try:
            sources.append((str(doc_path), _read_json(doc_path), True))
        except (OSError, ValueError) as err:
            log.warning("%s unreadable (%s): narrating %s again", doc_path, err, video.path)
    for p in state.parts:
        try:
            sources.append((str(p), _read_json(p), False))
        except (OSError, ValueError) as err:  # cannot happen with atomic writes, unless edited by hand
            log.warning("%s unreadable (%s): ignored", p, err)
    for where, body, is_doc in sources:
        if body.get("job") != fp:
            if overwrite:  # another job's work: discarded now, so no later run mistakes it for this job's
                Path(where).unlink(missing_ok=True)
                if not is_doc:
                    state.parts.remove(Path(where))
                continue
            theirs = body.get("job") or {}
            differs = sorted(k for k in set(fp) | set(theirs) if fp.get(k) != theirs.get(k)) or ["format"]
            raise LibraryError(f"{where} was written by a different narration job ({', '.join(differs)} differ); "
                               "use another --output-dir, or --overwrite to narrate these videos again")
        rescored = dual is None or body.get("dual_encoder") == dual
        windows = body["windows"] if is_doc else [dict(w, _k=int(k)) for k, w in body["windows"].items()]
        for k, w in enumerate(windows):
            k = w.pop("_k", k)
            if "captions" in w and rescored:
                state.done[k] = w
        if is_doc and rescored:
            state.doc = body
    return state


def plan(state: VideoState, window: float, stride: float, clip_length: int, de_clip_length: int | None) -> None:
    """Open the video for its frame count and rate and plan its windows (sets ``state.error`` if it cannot)."""
    from lavila.data.decode import open_video

    try:
        reader = open_video(state.video.path)
        try:
            n, fps = len(reader), float(reader.fps)
        finally:
            close = getattr(reader, "close", None)
            if close:
                close()
        if n <= 0 or fps <= 0:
            raise ValueError(f"{state.video.path}: no frames")
    except DECODE_ERRORS as err:
        state.error = f"{type(err).__name__}: {err}"
        return
    state.fps, state.num_frames = fps, n
    state.windows = sliding_windows(n, fps, window, stride, clip_length)
    if de_clip_length is not None:
        state.de_windows = sliding_windows(n, fps, window, stride, de_clip_length)
    # finished windows of another plan (the file changed) are not reused
    state.done = {k: w for k, w in state.done.items() if k < len(state.windows)
                  and (w["start"], w["end"]) == (round(state.windows[k].start, 3), round(state.windows[k].end, 3))}


def window_key(state: VideoState, k: int) -> str:
    """The sampling identity of a window: the video's file name and the window's start, as
    :func:`lavila.narrate.narrate.narrate_video` seeds it (so both give a video the same captions)."""
    return f"{state.video.path.name}@{round(state.windows[k].start, 3)}"


def pending_windows(state: VideoState) -> list[int]:
    return [k for k in range(len(state.windows or [])) if k not in state.done]


# --------------------------------------------------------------------------------------------------- decoding
@dataclass
class _Task:
    vid: int  # library index
    path: str
    windows: list[tuple[int, list[int], list[int] | None]]  # (window index, narrator frame ids, dual-encoder ids)


class WindowStream(IterableDataset):
    """``(video index, window index, clip | None, dual-encoder clip | None, error | None)`` for every pending
    window; each worker takes whole videos (``tasks[w::W]``), so a video is opened once. Window index -1 with an
    error: the video could not be opened at all. Errors are returned, never raised, and never become zero clips."""

    def __init__(self, tasks: list[_Task], transform: Any, de_transform: Any = None) -> None:
        self.tasks, self.transform, self.de_transform = tasks, transform, de_transform

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor | None, torch.Tensor | None, str | None]]:
        from lavila.data.decode import open_video

        info = get_worker_info()
        tasks = self.tasks if info is None else self.tasks[info.id::info.num_workers]
        for task in tasks:
            try:
                reader = open_video(task.path)
            except DECODE_ERRORS as err:
                yield task.vid, -1, None, None, f"{type(err).__name__}: {err}"
                continue
            try:
                for k, ids, de_ids in task.windows:
                    try:
                        frames = reader.get_frames(ids)
                        clip = self.transform(frames).float()
                        de_clip = None
                        if self.de_transform is not None:
                            de_frames = frames if de_ids == ids else reader.get_frames(de_ids)
                            de_clip = self.de_transform(de_frames).float()
                    except DECODE_ERRORS as err:
                        yield task.vid, k, None, None, f"{type(err).__name__}: {err}"
                        continue
                    yield task.vid, k, clip, de_clip, None
            finally:
                close = getattr(reader, "close", None)
                if close:
                    close()


def collate_windows(items: list) -> tuple[list[tuple[int, int]], torch.Tensor | None, torch.Tensor | None,
                                          dict[tuple[int, int], str]]:
    ok = [(v, k, c, d) for v, k, c, d, e in items if e is None]
    failed = {(v, k): e for v, k, _, _, e in items if e is not None}
    clips = torch.stack([c for _, _, c, _ in ok]) if ok else None
    de = torch.stack([d for *_, d in ok]) if ok and ok[0][3] is not None else None
    return [(v, k) for v, k, _, _ in ok], clips, de, failed


# --------------------------------------------------------------------------------------------------- dual encoder
@dataclass
class DualScorer:
    """A dual encoder's text-video similarity and text-text agreement of each window's candidates."""

    model: Any
    tokenizer: Any
    device: torch.device

    @classmethod
    def load(cls, path: str, device: torch.device, tokenizer: str | None = None) -> DualScorer:
        from lavila.models import create_model, tokenizer_for
        from lavila.models.checkpoint import CheckpointError

        try:
            model = create_model(path, kind="dual_encoder").eval().to(device)
        except CheckpointError as err:
            raise LavilaError(f"--dual-encoder {err}") from None
        return cls(model, tokenizer_for(model, tokenizer), device)

    @property
    def transform(self) -> Any:
        from lavila.models import model_transforms

        return model_transforms(self.model)[1]

    @property
    def num_frames(self) -> int:
        return self.model.config.vision.num_frames

    def score(self, clips: torch.Tensor, texts: list[list[str]]) -> list[list[tuple[float, float]]]:
        """Per window, per candidate: (cosine to the window's video embedding, mean cosine to the other
        candidates)."""
        import numpy as np

        from lavila.eval.embed import encode_texts, l2_normalize

        with torch.inference_mode():
            param = next(self.model.parameters())
            video = self.model.encode_image(clips.to(device=param.device, dtype=param.dtype)).float().cpu().numpy()
        video = l2_normalize(video)
        flat = [t.strip() for ts in texts for t in ts]
        emb = l2_normalize(encode_texts(self.model, self.tokenizer, flat, device=self.device))
        out, i = [], 0
        for b, ts in enumerate(texts):
            e = emb[i:i + len(ts)]
            i += len(ts)
            sims = e @ video[b]
            agree = cap.agreement(e)
            out.append([(float(s), float(a)) for s, a in zip(np.asarray(sims), agree)])
        return out


# --------------------------------------------------------------------------------------------------- progress
def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class Progress:
    """Windows and videos done over the whole library (this rank's share): tqdm on a terminal, else a plain line
    every ``every`` seconds, so a batch job's log shows the rate and the ETA too."""

    def __init__(self, total_windows: int, total_videos: int, *, rank: int, world_size: int, every: float,
                 tty: bool | None = None, stream: Any = None) -> None:
        self.total, self.videos_total = total_windows, total_videos
        self.done = self.videos_done = self.failed = 0
        self.stream = stream or sys.stderr
        self.tty = (self.stream.isatty() if hasattr(self.stream, "isatty") else False) if tty is None else tty
        self.every = every
        self.prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
        self.start = self.last = time.perf_counter()
        self.bar = None
        if self.tty and rank == 0 and total_windows:
            from tqdm import tqdm

            self.bar = tqdm(total=total_windows, desc="narrate", unit="window", dynamic_ncols=True, smoothing=0.05,
                            file=self.stream)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _fmt_eta((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.prefix}narrate: {self.done}/{self.total} windows ({pct:.1f}%), {self.videos_done}/"
                f"{self.videos_total} videos, {self.failed} failed, {rate:.2f} windows/s, ETA {eta}")

    def update(self, windows: int, *, videos: int = 0, failed: int = 0) -> None:
        self.done += windows
        self.videos_done += videos
        self.failed += failed
        if self.bar is not None:
            self.bar.update(windows)
            self.bar.set_postfix(videos=f"{self.videos_done}/{self.videos_total}", failed=self.failed, refresh=False)
        elif not self.tty and time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            print(self.line(), file=self.stream, flush=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.tty and self.total:
            print(self.line(), file=self.stream, flush=True)


# ------------------------------------------------------------------------------------------------------ outputs
def render(doc: dict[str, Any], job: NarrateJob) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The document with each window's chosen ``caption``/``score`` (``--select``, ``--subject``) and the segments
    of the exports (merged with ``--merge-repeats``)."""
    for w in doc["windows"]:
        best = cap.choose(w.get("captions") or [], job.select)
        if best is None:
            w.pop("caption", None)
            w.pop("score", None)
        else:
            w["caption"] = cap.tidy(cap.normalize_subject(best["text"], job.subject))
            w["score"] = best["score"]
    doc["postprocess"] = {"select": job.select, "subject": job.subject, "merge_repeats": job.merge_repeats}
    return doc, cap.segments_of(doc, job.select, job.subject, job.merge_repeats)


def _write_if_changed(path: Path, text: str) -> bool:
    from lavila.atomic import atomic_write_text

    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def write_outputs(video: LibraryVideo, doc: dict[str, Any], out_dir: Path, job: NarrateJob) -> list[dict[str, Any]]:
    """``<id>.json`` (the commit point of a video), then ``.srt`` and ``.txt``; returns the segments."""
    doc, segments = render(doc, job)
    _write_if_changed(video.output(out_dir, ".json"), json.dumps(doc, indent=1, ensure_ascii=False))
    failpoint("narrate.video_written", video.video_id)
    _write_if_changed(video.output(out_dir, ".srt"), to_srt(segments, doc.get("stride", 1.0)))
    _write_if_changed(video.output(out_dir, ".txt"), cap.to_text(segments))
    return segments


def export_captions(library: list[LibraryVideo], out_dir: Path, job: NarrateJob, fp: dict[str, Any],
                    known: dict[int, list[dict[str, Any]]]) -> tuple[Path, int]:
    """``captions.json``: ``{video_id: segments}`` of every narrated video of the library (``known``: segments this
    rank already has; the others are read from their ``<id>.json``, if this job wrote them). A video with windows
    that failed to decode is listed with the windows that did not."""
    from lavila.atomic import atomic_write_text

    export: dict[str, list[dict[str, Any]]] = {}
    for v in library:
        if v.index in known:
            export[v.video_id] = known[v.index]
            continue
        path = v.output(out_dir, ".json")
        try:
            doc = _read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("job") == fp and doc.get("windows"):
            export[v.video_id] = cap.segments_of(doc, job.select, job.subject, job.merge_repeats)
    target = out_dir / job.captions_file
    atomic_write_text(target, json.dumps(export, indent=1, ensure_ascii=False))
    failpoint("narrate.captions_written", target.name)
    return target, len(export)


def _failure_file(out_dir: Path, rank: int, world_size: int) -> Path:
    return out_dir / ("failures.json" if world_size == 1 else f"failures.rank{rank}.json")


def _library_complete(library: list[LibraryVideo], out_dir: Path) -> bool:
    """Every video has its ``<id>.json`` or is listed by some rank's failure file (this run's view of it)."""
    listed: set[str] = set()
    for f in out_dir.glob("failures*.json"):
        try:
            listed.update(str(e.get("video_id")) for e in _read_json(f) if isinstance(e, dict))
        except (OSError, ValueError, TypeError):
            continue
    return all(v.output(out_dir, ".json").is_file() or v.video_id in listed for v in library)


# --------------------------------------------------------------------------------------------------------- run
def run_narrate(job: NarrateJob) -> int:
    """``lavila narrate``: video mode here, metadata mode in :func:`lavila.narrate.narrate.run_metadata`.

    The verb's entry lives in this module because the library runner is built on narrate's core (batching,
    seeding, the model loader) and so sits above it; ``--checkpoint``/``--dual-encoder`` may be released names or
    URLs (:func:`lavila.models.hub.resolve_checkpoint`).
    """
    from lavila.models.hub import resolve_checkpoint
    from lavila.narrate.narrate import run_metadata

    if not job.videos:
        return run_metadata(job)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job.checkpoint = str(resolve_checkpoint(job.checkpoint))  # a file, a released name or a URL (cached)
    if job.dual_encoder:
        job.dual_encoder = str(resolve_checkpoint(job.dual_encoder))
    from lavila.dist import world_info_from_env
    from lavila.locks import output_lock

    # one job per output folder (each rank its own lock file: ranks write their share of videos concurrently)
    with output_lock(job.output_dir or ".", "lavila narrate", rank=world_info_from_env().rank):
        return run_library(job)


def run_library(job: NarrateJob, rank: int | None = None, world_size: int | None = None) -> int:
    """Narrate the library of ``job.videos`` (this rank's share); returns the exit code (see module docstring)."""
    from lavila.atomic import remove_stale_temps
    from lavila.dist import resolve_device, world_info_from_env
    from lavila.narrate.narrate import _load_model

    info = world_info_from_env()
    rank = info.rank if rank is None else rank
    world_size = info.world_size if world_size is None else world_size
    out_dir = Path(job.output_dir or ".")
    window, stride = window_plan(job)
    device = resolve_device(job.device, info.local_rank)
    fp = job_fingerprint(job, window, stride, device)
    dual_id = _dual_id(job)
    library = collect_videos(job.videos)
    mine = library[rank::world_size]
    states = [load_state(v, out_dir, fp, dual_id, overwrite=job.overwrite) for v in mine]
    for folder in {v.output(out_dir, ".json").parent for v in mine}:
        remove_stale_temps(folder, [f"{Path(v.video_id).name}{ext}" for v in mine
                                    for ext in (".json", ".srt", ".txt")] + ["failures*.json", job.captions_file])
    for folder in {v.parts_folder(out_dir) for v in mine}:
        if folder.is_dir():
            remove_stale_temps(folder, "*.part")

    finished = [s for s in states if s.finished]
    todo = [s for s in states if not s.finished]
    model = tokenizer = scorer = None
    if todo:
        model, tokenizer = _load_model(job, device)
        if job.dual_encoder:
            scorer = DualScorer.load(job.dual_encoder, device, job.dual_encoder_tokenizer)
        clip_length = model.config.vision.num_frames
        de_length = scorer.num_frames if scorer is not None else None
        with ThreadPoolExecutor(max(1, min(job.num_workers, 8))) as pool:  # probing is I/O: threads suffice
            list(pool.map(lambda s: plan(s, window, stride, clip_length, de_length), todo))
    segments: dict[int, list[dict[str, Any]]] = {}
    for s in finished:  # re-render (a changed --select/--subject/--merge-repeats, or a kill before .srt/.txt)
        segments[s.video.index] = write_outputs(s.video, s.doc, out_dir, job)
        for p in s.parts:  # left by a kill after the document was written
            p.unlink(missing_ok=True)

    runnable = [s for s in todo if s.error is None]
    total = sum(len(pending_windows(s)) for s in runnable)
    progress = Progress(total, len(mine), rank=rank, world_size=world_size, every=job.progress_every)
    progress.videos_done = len(finished)
    progress.failed = sum(s.error is not None for s in todo)
    summary = {"windows": 0, "seconds": 0.0}
    by_index = {s.video.index: s for s in states}
    verbose = len(library) <= 10
    try:
        if total:
            _narrate_stream(job, runnable, by_index, model, tokenizer, scorer, out_dir, progress, segments,
                            summary, verbose, fp)
        for s in runnable:  # videos whose every window was done before this run (resumed from parts only)
            if s.video.index not in segments and not pending_windows(s) and s.error is None:
                segments[s.video.index] = _finish(s, job, out_dir, fp, dual_id, progress, verbose)
    finally:
        progress.close()
    return _report(job, library, mine, states, segments, summary, out_dir, rank, world_size, fp)


def _narrate_stream(job: NarrateJob, runnable: list[VideoState], by_index: dict[int, VideoState], model: Any,
                    tokenizer: Any, scorer: DualScorer | None, out_dir: Path, progress: Progress,
                    segments: dict[int, list[dict[str, Any]]], summary: dict[str, Any], verbose: bool,
                    fp: dict[str, Any]) -> None:
    dual_id = _dual_id(job)
    tasks = []
    remaining: dict[int, int] = {}
    for s in runnable:
        ks = pending_windows(s)
        if not ks:
            continue
        de = s.de_windows
        tasks.append(_Task(s.video.index, str(s.video.path),
                           [(k, s.windows[k].frame_ids, de[k].frame_ids if de else None) for k in ks]))
        remaining[s.video.index] = len(ks)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(job.num_workers, len(tasks), cpus)  # a worker takes whole videos; more than CPUs only thrash
    stream = WindowStream(tasks, clip_transform(model), scorer.transform if scorer is not None else None)
    loader = DataLoader(stream, batch_size=job.batch_size, num_workers=workers, collate_fn=collate_windows,
                        pin_memory=next(model.parameters()).device.type == "cuda")
    buffered: dict[int, dict[int, dict[str, Any]]] = {}
    count = 0

    def flush() -> None:
        nonlocal count
        from lavila.atomic import atomic_write_text

        for vid, entries in buffered.items():
            if not entries:
                continue
            s = by_index[vid]
            part = s.video.parts_folder(out_dir) / f"{s.video.stem}.{s.next_seq:05d}.part"
            body = {"job": fp, "dual_encoder": dual_id, "windows": {str(k): e for k, e in sorted(entries.items())}}
            atomic_write_text(part, json.dumps(body, ensure_ascii=False))
            failpoint("narrate.part_written", part.name)
            s.parts.append(part)
            s.next_seq += 1
        buffered.clear()
        count = 0

    def entry_of(s: VideoState, k: int) -> dict[str, Any]:
        w = s.windows[k]
        return {"start": round(w.start, 3), "end": round(w.end, 3), "frame_ids": w.frame_ids}

    def window_done(vid: int, n: int = 1) -> None:
        remaining[vid] -= n
        if remaining[vid] == 0:
            s = by_index[vid]
            flush_one(vid)
            segments[vid] = _finish(s, job, out_dir, fp, dual_id, progress, verbose)

    def flush_one(vid: int) -> None:
        nonlocal count
        count -= len(buffered.pop(vid, {}))  # its windows go straight into the document

    start = time.perf_counter()
    try:
        for keys, clips, de_clips, failed in loader:
            done_now: dict[int, int] = {}
            for (vid, k), why in failed.items():
                s = by_index[vid]
                if k < 0:  # the file did not open in the worker: every pending window of it fails
                    s.error = why
                    n = remaining.pop(vid, 0)
                    progress.update(n, failed=1)
                    log.warning("%s skipped: %s", s.video.path, why)
                    continue
                s.failed[k] = why
                log.warning("%s window %.2f-%.2f s skipped: %s", s.video.path, s.windows[k].start, s.windows[k].end,
                            why)
                done_now[vid] = done_now.get(vid, 0) + 1
            if clips is not None:
                generators = [clip_generator(job.seed, window_key(by_index[v], k)) for v, k in keys]
                narrated = narrate_batch(model, tokenizer, clips, job.generation, generators=generators)
                scores = scorer.score(de_clips, [t for t, _ in narrated]) if scorer is not None else None
                for i, ((vid, k), (texts, sc)) in enumerate(zip(keys, narrated)):
                    s = by_index[vid]
                    entry = entry_of(s, k)
                    entry["captions"] = [{"text": t, "score": x} for t, x in zip(texts, sc)]
                    if scores is not None:
                        for c, (sim, agree) in zip(entry["captions"], scores[i]):
                            c["similarity"], c["agreement"] = sim, agree
                    s.done[k] = entry
                    buffered.setdefault(vid, {})[k] = entry
                    count += 1
                    done_now[vid] = done_now.get(vid, 0) + 1
                summary["windows"] += len(keys)
            progress.update(len(keys) + sum(1 for v, k in failed if k >= 0))
            if count >= job.part_size:
                flush()
            for vid, n in done_now.items():
                if vid in remaining:
                    window_done(vid, n)
    finally:
        flush()  # whatever finished before an interrupt is kept
        summary["seconds"] += time.perf_counter() - start


def _finish(s: VideoState, job: NarrateJob, out_dir: Path, fp: dict[str, Any], dual_id: dict[str, Any] | None,
            progress: Progress, verbose: bool) -> list[dict[str, Any]]:
    """Write the document and renders of a video whose windows are all attempted, then drop its parts."""
    windows = []
    for k, w in enumerate(s.windows or []):
        if k in s.done:
            windows.append(s.done[k])
        else:
            windows.append({"start": round(w.start, 3), "end": round(w.end, 3), "frame_ids": w.frame_ids,
                            "error": s.failed.get(k, "not narrated")})
    if dual_id is None:
        for w in windows:
            for c in w.get("captions") or []:
                c.pop("similarity", None)
                c.pop("agreement", None)
    doc = {"format": DOC_FORMAT, "video": str(s.video.path), "video_id": s.video.video_id, "fps": s.fps,
           "num_frames": s.num_frames, "duration": s.num_frames / s.fps, "window": fp["window"],
           "stride": fp["stride"], "job": fp, "dual_encoder": dual_id, "windows": windows}
    segs = write_outputs(s.video, doc, out_dir, job)
    s.doc = doc
    for p in s.parts:
        p.unlink(missing_ok=True)
    s.parts = []
    bad = sum("error" in w for w in windows)
    progress.update(0, videos=1, failed=int(bad > 0))
    line = (f"{s.video.path}: {len(windows) - bad} windows captioned" + (f", {bad} failed to decode" if bad else "")
            + f" -> {out_dir / s.video.video_id}.json/.srt/.txt")
    if verbose:
        line += "".join(f"\n  [{g['start']:.1f}-{g['end']:.1f}s] {g['caption']}" for g in segs[:3])
    progress.write(line)
    return segs


def _report(job: NarrateJob, library: list[LibraryVideo], mine: list[LibraryVideo], states: list[VideoState],
            segments: dict[int, list[dict[str, Any]]], summary: dict[str, Any], out_dir: Path, rank: int,
            world_size: int, fp: dict[str, Any]) -> int:
    from lavila.atomic import atomic_write_text

    failures = []
    for s in states:
        if s.error is not None:
            failures.append({"video": str(s.video.path), "video_id": s.video.video_id, "error": s.error})
        elif s.doc is not None and any("error" in w for w in s.doc["windows"]):
            bad = [w for w in s.doc["windows"] if "error" in w]
            failures.append({"video": str(s.video.path), "video_id": s.video.video_id,
                             "error": f"{len(bad)} of {len(s.doc['windows'])} windows failed to decode "
                                      f"(first: {bad[0]['start']:.2f}-{bad[0]['end']:.2f} s: {bad[0]['error']})",
                             "failed_windows": len(bad), "windows": len(s.doc["windows"])})
    fail_file = _failure_file(out_dir, rank, world_size)
    if failures:
        atomic_write_text(fail_file, json.dumps(failures, indent=1, ensure_ascii=False))
    elif fail_file.exists():
        fail_file.unlink()
    complete = world_size == 1 or _library_complete(library, out_dir)
    exported = None
    if complete and job.captions_file:
        exported = export_captions(library, out_dir, job, fp, segments)
    done = sum(1 for s in states if s.doc is not None)
    rate = summary["windows"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    print(f"narrated {summary['windows']} windows in {summary['seconds']:.1f} s ({rate:.2f} windows/s); "
          f"{done} of {len(mine)} videos done" + (f" (rank {rank} of {world_size})" if world_size > 1 else "")
          + (f"; {exported[1]} videos in {exported[0]}" if exported else ""))
    if failures:
        print(f"lavila narrate: {len(failures)} of {len(mine)} videos failed (listed in {fail_file}); rerun the same "
              "command to retry them:", file=sys.stderr)
        for f in failures[:20]:
            print(f"  {f['video']}: {f['error']}", file=sys.stderr)
        if len(failures) > 20:
            print(f"  ... and {len(failures) - 20} more", file=sys.stderr)
        # under torchrun a rank that exits non-zero gets the others killed: only a rank that finds the whole
        # library attempted reports the failures through its exit code
        return 1 if complete else 0
    return 0


__all__ = ["LibraryError", "LibraryVideo", "NarrateJob", "Progress", "WindowStream", "collect_videos",
           "export_captions", "job_fingerprint", "load_state", "parse_every", "render", "run_library", "run_narrate",
           "window_plan"]
