"""`lavila prepare-ego4d SRC DST`: cut videos into fixed-length chunks, resized, as the Ego4D loader expects.

Output layout (spec §2.2): ``DST/<uid>.mp4/<start>.mp4`` with ``<start>`` in {0, L, 2L, ...} seconds. Resize rule of
the reference script: landscape videos taller than `short_side` get height = short_side, portrait videos wider than
`short_side` get width = short_side (the other side keeps the aspect ratio, rounded to an even number as H.264 4:2:0
needs); smaller videos keep their size. The frame rate is kept (the loader assumes 30 fps for Ego4D); audio is
dropped (no loader reads it). The display rotation is applied, as the ffmpeg CLI does.

Unlike the reference script (one ffmpeg process per chunk, each seeking from the start), each video is decoded once,
sequentially, and every chunk is encoded as its frames arrive: PyAV (bundled FFmpeg), libx264 (mpeg4 when libx264 is
missing).

Resumable and safe to interrupt: a chunk is written to a temporary name, checked (its frame count read back), fsynced
and renamed; a per-video ``manifest.json`` (written atomically) lists finished chunks with their frame count and
size. A rerun skips videos whose manifest says complete and whose chunks are all present with the recorded size,
deletes leftovers of interrupted runs and re-encodes from the first missing chunk. A video that cannot be decoded is
reported (with the reason) in the final report and in ``DST/prepare_report.json``; the others go on. A destination
that refuses writes (read-only, full, over quota) is not a bad video: the job stops with one line naming the file.

Parallel videos run in worker processes that die with the parent (``PR_SET_PDEATHSIG`` on Linux, a watchdog of the
parent pid elsewhere), so a killed job leaves no process writing behind it that a rerun would race. A worker that
dies (the OOM killer, a kill) loses only its video: that video is reported as failed (with how the worker died),
a fresh worker takes the remaining videos, and the job ends with its report. Fail points (:mod:`lavila.failpoints`):
``prepare.video_start`` (detail: the source file name), ``prepare.chunk_encoded`` and ``prepare.chunk_renamed``
(detail: ``<uid>.mp4/<start>.mp4``), plus the ``atomic.*`` points of ``manifest.json`` and ``prepare_report.json``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import json
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from tyro.conf import Positional

from lavila.atomic import DiskFullError, atomic_write_bytes, remove_stale_temps
from lavila.config import option
from lavila.errors import LavilaError
from lavila.failpoints import failpoint

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Errors only a write can cause: the destination refuses every video the same way, so the job stops with one line
# (``Read-only file system: DST/...``) instead of "failing" each source in turn.
DESTINATION_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class PrepareConfig:
    chunk_len: int = 300
    short_side: int = 288
    codec: str = "libx264"
    crf: int = 23
    preset: str = "medium"
    threads: int = 1  # encoder/decoder threads per worker process

    def key(self) -> dict:
        """Settings that change the chunk files; a manifest written with other settings is not trusted."""
        return {"chunk_len": self.chunk_len, "short_side": self.short_side, "codec": self.codec, "crf": self.crf}


@dataclass
class VideoReport:
    source: str
    uid: str
    done: int = 0  # chunks written by this run
    skipped: int = 0  # chunks already finished and verified
    failed: bool = False
    reason: str = ""
    chunks: list[int] = field(default_factory=list)
    # (errno, strerror, file) of a DESTINATION_ERRNOS failure: not the video's fault, the job stops (not in the JSON)
    destination_error: tuple[int, str, str] | None = None

    def as_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "destination_error"}

    def raise_destination_error(self) -> None:
        """Re-raise, in the parent, the write failure a worker met (``DiskFullError`` for a full disk)."""
        if self.destination_error is None:
            return
        code, strerror, filename = self.destination_error
        if code in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(filename, code)
        raise OSError(code, strerror, filename)


# ------------------------------------------------------------------------------------------------------ geometry
def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after the reference's rule: landscape -> height short_side, portrait -> width short_side."""
    if width >= height:
        if height > short_side:
            return _even(width * short_side / height), short_side
    elif width > short_side:
        return short_side, _even(height * short_side / width)
    return width - width % 2, height - height % 2  # 4:2:0 needs even sizes; at most one pixel row/column is lost


def chunk_start_label(start: int) -> str:
    """File stem of a chunk: integer seconds without padding (``300``), as `lavila.data.sampling.chunk_path`."""
    return str(int(start))


# ------------------------------------------------------------------------------------------------------ encoding
class ChunkWriter:
    """Encodes frames to `<final>.tmp`, then verifies, fsyncs and renames to `final` on `finish()`."""

    def __init__(self, final: Path, rate: Fraction, width: int, height: int, cfg: PrepareConfig) -> None:
        import av

        self.final = final
        self.tmp = final.with_name(final.name + ".tmp")
        self.container = av.open(str(self.tmp), "w", format="mp4")
        codec = cfg.codec if cfg.codec in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.codec_context.thread_count = max(0, cfg.threads)
        if codec == "libx264":
            self.stream.options = {"crf": str(cfg.crf), "preset": cfg.preset}
        else:
            self.stream.codec_context.bit_rate = 2_000_000
        self.count = 0
        self.time_base = 1 / rate

    def write(self, frame) -> None:
        frame.pts = self.count
        frame.time_base = self.time_base  # output timestamps count frames at the source's average rate
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1

    def finish(self) -> dict:
        import av

        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        with av.open(str(self.tmp)) as check:  # read back before trusting the file
            frames = check.streams.video[0].frames
        if frames != self.count:
            raise RuntimeError(f"{self.tmp}: wrote {self.count} frames but the file holds {frames}")
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        detail = f"{self.final.parent.name}/{self.final.name}"
        failpoint("prepare.chunk_encoded", detail)
        os.replace(self.tmp, self.final)
        failpoint("prepare.chunk_renamed", detail)  # renamed, not yet in the manifest: a rerun re-encodes it
        return {"frames": self.count, "bytes": self.final.stat().st_size}

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass
        if self.tmp.exists():
            self.tmp.unlink()


def write_video(
    path: str | os.PathLike,
    frames: Iterator[np.ndarray],
    fps: float | Fraction,
    codec: str = "libx264",
    gop: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> int:
    """Encode RGB uint8 [H,W,3] arrays to a video file (tests, benchmarks, synthetic data). Returns frame count."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with av.open(str(path), "w") as out:
        stream = None
        for arr in frames:
            if stream is None:
                stream = out.add_stream(codec if codec in av.codecs_available else "mpeg4", rate=rate)
                stream.height, stream.width = arr.shape[:2]
                stream.pix_fmt = "yuv420p"
                if gop:
                    stream.codec_context.gop_size = gop
                if stream.codec_context.name == "libx264":
                    stream.options = {"crf": str(crf), "preset": preset}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts, frame.time_base = n, 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
            n += 1
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return n


def coded_frame(index: int, height: int = 64, width: int = 96) -> np.ndarray:
    """A synthetic frame whose index survives lossy coding: 16 bits as black/white blocks of a 4x4 grid."""
    img = np.zeros((height, width, 3), np.uint8)
    bh, bw = height // 4, width // 4
    for k in range(16):
        if (index >> k) & 1:
            r, c = divmod(k, 4)
            img[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 255
    return img


def read_frame_code(frame) -> int:
    """Inverse of :func:`coded_frame` for a decoded (possibly resized) `[H,W,3]` frame."""
    arr = np.asarray(frame, dtype=np.float32)
    h, w = arr.shape[:2]
    bh, bw = h / 4, w / 4
    value = 0
    for k in range(16):
        r, c = divmod(k, 4)
        block = arr[
            int(r * bh + bh / 4) : int((r + 1) * bh - bh / 4), int(c * bw + bw / 4) : int((c + 1) * bw - bw / 4)
        ]
        if block.mean() > 127:
            value |= 1 << k
    return value


def write_synthetic_video(
    path: str | os.PathLike, num_frames: int, fps: float = 30, height: int = 64, width: int = 96, gop: int | None = 30
) -> int:
    """A video whose frame i shows the code of i (see :func:`coded_frame`), for exact seek/sampling tests."""
    return write_video(path, (coded_frame(i, height, width) for i in range(num_frames)), fps, gop=gop)


# ------------------------------------------------------------------------------------------------------ manifest
def _load_manifest(out_dir: Path, cfg: PrepareConfig, source: Path) -> dict:
    fresh = {"version": MANIFEST_VERSION, "source": str(source), "config": cfg.key(), "chunks": {}, "complete": False}
    path = out_dir / MANIFEST
    if not path.exists():
        return fresh
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return fresh
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("config") != cfg.key():
        return fresh  # different settings: every chunk is redone
    return manifest


def _save_manifest(out_dir: Path, manifest: dict) -> None:
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write_bytes(out_dir / MANIFEST, lambda f: f.write(data))


def _verified(out_dir: Path, manifest: dict) -> dict[str, dict]:
    """Chunks of the manifest whose file exists with the recorded size (a new dict)."""
    ok = {}
    for label, info in manifest.get("chunks", {}).items():
        path = out_dir / f"{label}.mp4"
        if path.exists() and path.stat().st_size == info.get("bytes"):
            ok[label] = info
    return ok


# ------------------------------------------------------------------------------------------------------ one video
def prepare_video(source: str | os.PathLike, dst_root: str | os.PathLike, cfg: PrepareConfig) -> VideoReport:
    """Chunk one video (resuming a previous run). Never raises for a bad video: the report says what failed."""
    source = Path(source)
    uid = source.stem
    report = VideoReport(str(source), uid)
    out_dir = Path(dst_root) / f"{uid}.mp4"
    failpoint("prepare.video_start", source.name)
    try:
        _prepare(source, out_dir, cfg, report)
    except Exception as err:  # one bad video must not stop the others
        report.failed, report.reason = True, f"{type(err).__name__}: {err}"
        if isinstance(err, OSError) and err.errno in DESTINATION_ERRNOS:
            filename = os.fsdecode(err.filename) if err.filename is not None else str(out_dir)
            report.destination_error = (err.errno, err.strerror or os.strerror(err.errno), filename)
    return report


def _prepare(source: Path, out_dir: Path, cfg: PrepareConfig, report: VideoReport) -> None:
    import av

    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if source.stat().st_size == 0:
        raise ValueError(f"{source} is empty (0 bytes)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob("*.tmp"):  # interrupted writes of a previous run
        leftover.unlink()
    manifest = _load_manifest(out_dir, cfg, source)
    done = _verified(out_dir, manifest)
    if manifest.get("complete") and len(done) == manifest.get("num_chunks"):
        report.skipped = len(done)
        report.chunks = sorted(int(k) for k in done)
        return
    manifest.update(chunks=dict(done), complete=False)

    with av.open(str(source)) as container:
        if not container.streams.video:
            raise ValueError(f"{source} has no video stream")
        stream = container.streams.best("video")
        stream.codec_context.thread_count = max(0, cfg.threads)
        rate = Fraction(stream.average_rate or stream.guessed_rate or 30)
        tb = Fraction(stream.time_base)
        start_pts = stream.start_time or 0

        # Resume at the first chunk that is not finished.
        first = 0
        while chunk_start_label(first * cfg.chunk_len) in done:
            first += 1
        if first > 0:
            seek_pts = start_pts + int(Fraction(first * cfg.chunk_len) / tb)
            container.seek(seek_pts, backward=True, any_frame=False, stream=stream)

        writer: ChunkWriter | None = None
        current = -1
        size: tuple[int, int] | None = None
        rot_k = 0
        index = 0
        try:
            for frame in _decode_strict(container, stream, source):
                t = Fraction(frame.pts - start_pts) * tb if frame.pts is not None else Fraction(index) / rate
                index += 1
                k = max(0, math.floor(t / Fraction(cfg.chunk_len)))
                if k < first:
                    continue
                if size is None:
                    rot_k = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
                    w, h = (frame.height, frame.width) if rot_k % 2 else (frame.width, frame.height)
                    size = target_size(w, h, cfg.short_side)
                if k != current:
                    if writer is not None:
                        _finish_chunk(writer, out_dir, manifest, current, cfg, report)
                        writer = None
                    current = k
                    label = chunk_start_label(k * cfg.chunk_len)
                    if label in done:
                        continue
                    writer = ChunkWriter(out_dir / f"{label}.mp4", rate, size[0], size[1], cfg)
                elif writer is None:
                    continue  # a chunk that a previous run finished
                writer.write(_to_output_frame(frame, size, rot_k))
            if first == 0 and stream.frames and index < stream.frames - 2:
                raise RuntimeError(f"{source}: only {index} of the {stream.frames} frames in its header decode")
            if writer is not None:
                _finish_chunk(writer, out_dir, manifest, current, cfg, report)
                writer = None
        finally:
            if writer is not None:
                writer.abort()
    if not manifest["chunks"]:
        raise ValueError(f"{source}: no frame could be decoded")
    manifest["complete"] = True
    manifest["num_chunks"] = len(manifest["chunks"])
    _save_manifest(out_dir, manifest)
    report.skipped = len(done)
    report.chunks = sorted(int(k) for k in manifest["chunks"])


def _decode_strict(container, stream, source: Path):
    """Decode every frame; a corrupt packet is an error (a silently shortened chunk would shift all later clips)."""
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as err:
            raise RuntimeError(f"{source}: corrupt video data at {packet.pts}: {err}") from err
        yield from frames


def _to_output_frame(frame, size: tuple[int, int], rot_k: int):
    import av

    from lavila.data.decode import single_thread_scaling

    w, h = size
    if rot_k == 0:
        return frame.reformat(width=w, height=h, format="yuv420p", interpolation="BICUBIC", **single_thread_scaling())
    cw, ch = (h, w) if rot_k % 2 else (w, h)
    arr = frame.to_ndarray(format="rgb24", width=cw, height=ch, interpolation="BICUBIC", **single_thread_scaling())
    arr = np.ascontiguousarray(np.rot90(arr, k=rot_k))
    return av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format="yuv420p", **single_thread_scaling())


def _finish_chunk(
    writer: ChunkWriter, out_dir: Path, manifest: dict, k: int, cfg: PrepareConfig, report: VideoReport
) -> None:
    info = writer.finish()
    manifest["chunks"][chunk_start_label(k * cfg.chunk_len)] = info
    _save_manifest(out_dir, manifest)
    report.done += 1


# ------------------------------------------------------------------------------------------------------ many videos
def list_sources(src: str | os.PathLike) -> list[Path]:
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"prepare-ego4d: {src} is neither a video file nor a folder")
    return sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _work(job: tuple[str, str, PrepareConfig]) -> VideoReport:
    return prepare_video(*job)


# ------------------------------------------------------------------------------------------------------ workers
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker exit as soon as `parent_pid` does, wherever it is in its work.

    ``multiprocessing.Pool`` workers notice a dead parent only between tasks, so a killed job left workers encoding
    for the rest of their video, racing the rerun. Linux: the kernel sends SIGKILL on the parent's death; a thread
    watching ``os.getppid()`` covers other systems and the moment before ``prctl`` took effect.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_main(conn: mp.connection.Connection, parent_pid: int) -> None:
    """Prepare the videos the parent sends, one at a time, until it sends ``None`` or goes away."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(_work(job))


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"was killed by {name}" + (" (the OOM killer sends it when memory runs out)" if name == "SIGKILL"
                                          else "")
    else:
        how = f"exited with status {exitcode}"
    return f"WorkerDied: the worker process preparing this video {how}; rerun to retry it"


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True,
                                name="prepare-ego4d-worker")
        self.proc.start()
        child.close()
        self.job: tuple[str, str, PrepareConfig] | None = None

    def send(self, job: tuple[str, str, PrepareConfig]) -> None:
        self.job = job
        self.conn.send(job)

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()


def _run_workers(jobs: list[tuple[str, str, PrepareConfig]], workers: int) -> Iterator[VideoReport]:
    """Reports of `jobs` prepared by `workers` processes, in completion order; a dead worker fails its video only.

    One job per worker at a time (videos take minutes, dispatch costs nothing), so the video a dead worker held is
    known exactly; the parent waits on result pipes *and* process sentinels, so a death can never hang it.
    """
    ctx = mp.get_context("spawn")
    queue = collections.deque(jobs)
    pool = [_Worker(ctx) for _ in range(min(workers, len(jobs)))]
    try:
        for w in pool:
            w.send(queue.popleft())
        while any(w.job is not None for w in pool):
            busy = [w for w in pool if w.job is not None]
            ready = set(mp.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for i, w in enumerate(pool):
                if w.job is None or (w.conn not in ready and w.proc.sentinel not in ready):
                    continue
                report = None
                try:
                    if w.conn.poll():
                        report = w.conn.recv()
                except (EOFError, OSError):
                    report = None
                if report is None:  # died without a result (it may have sent nothing, or half a message)
                    w.proc.join(timeout=10)
                    src = w.job[0]
                    report = VideoReport(src, Path(src).stem, failed=True, reason=_death_reason(w.proc.exitcode))
                    w.stop(kill=True)
                    w.job = None
                    if queue:
                        w = pool[i] = _Worker(ctx)
                w.job = None
                yield report
                if queue:
                    w.send(queue.popleft())
    finally:
        for w in pool:
            w.stop(kill=w.job is not None)


def prepare_all(
    src: str | os.PathLike, dst: str | os.PathLike, cfg: PrepareConfig, workers: int = 1, progress: bool = True
) -> list[VideoReport]:
    """Chunk every video of `src` into `dst` with `workers` processes; writes `dst/prepare_report.json`."""
    from lavila.progress import progress as progress_bar  # tqdm on a terminal, plain periodic lines in a log

    sources = list_sources(src)
    Path(dst).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dst, "prepare_report.json")  # per-video leftovers: removed when the video is redone
    jobs = [(str(s), str(dst), cfg) for s in sources]
    reports: list[VideoReport] = []
    bar = progress_bar(total=len(jobs), unit="video", desc="prepare-ego4d", enabled=progress)
    if workers <= 1:
        for job in jobs:
            reports.append(_work(job))
            reports[-1].raise_destination_error()
            bar.update(1)
    else:
        with contextlib.closing(_run_workers(jobs, workers)) as done:  # a stop ends the workers at once
            for rep in done:
                reports.append(rep)
                rep.raise_destination_error()
                bar.update(1)
    bar.close()
    reports.sort(key=lambda r: r.source)
    summary = summarize(reports)
    payload = json.dumps({"summary": summary, "videos": [r.as_json() for r in reports]}, indent=1).encode()
    atomic_write_bytes(Path(dst) / "prepare_report.json", lambda f: f.write(payload))
    return reports


def summarize(reports: list[VideoReport]) -> dict:
    return {
        "videos": len(reports),
        "videos_failed": sum(r.failed for r in reports),
        "chunks_done": sum(r.done for r in reports),
        "chunks_skipped": sum(r.skipped for r in reports),
    }


# ------------------------------------------------------------------------------------------------------ CLI
@dataclass
class PrepareJob:
    """Cut Ego4D videos into fixed-length, resized chunks (``DST/<uid>.mp4/<start>.mp4``), resumably."""

    src: Positional[Path] = option(help="a folder of source videos (<uid>.mp4, ...) or one video file")
    dst: Positional[Path] = option(help="output root: DST/<uid>.mp4/<start>.mp4")
    settings: PrepareConfig = field(default_factory=PrepareConfig)  # --chunk-len --short-side --codec --crf ...
    workers: int = option(max(1, (os.cpu_count() or 1) // 2), "parallel videos", positive=True)
    progress: bool = option(True, "tqdm progress bar")


def run_prepare(args: PrepareJob) -> int:
    from lavila.locks import output_lock

    t0 = time.time()
    try:
        with output_lock(args.dst, "lavila prepare-ego4d"):  # one job per destination (a second is refused)
            reports = prepare_all(args.src, args.dst, args.settings, args.workers, progress=args.progress)
    except FileNotFoundError as err:
        raise LavilaError(str(err), exit_code=2) from err
    s = summarize(reports)
    print(
        f"prepare-ego4d: {s['videos']} videos in {time.time() - t0:.1f} s — chunks written {s['chunks_done']}, "
        f"already done {s['chunks_skipped']}; videos failed {s['videos_failed']}"
    )
    for r in reports:
        if r.failed:
            print(f"  FAILED {r.source}: {r.reason}", file=sys.stderr)
    print(f"report: {Path(args.dst) / 'prepare_report.json'}")
    return 1 if s["videos_failed"] else 0


__all__ = [
    "PrepareConfig",
    "PrepareJob",
    "VideoReport",
    "coded_frame",
    "list_sources",
    "prepare_all",
    "prepare_video",
    "read_frame_code",
    "target_size",
    "write_synthetic_video",
    "write_video",
]
