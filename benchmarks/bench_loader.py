"""Loader benchmark: our seeking PyAV loader vs the original's decord path and vs decoding the whole chunk.

Side by side in one run, on the same chunk file and the same frame ids:

* ``decord``: the original's loading path (spec §2.4): ``decord.VideoReader(chunk)`` + ``get_batch(ids).asnumpy()``
  with one decoder thread (per-core comparison), and with ``num_threads=0``, the original code's default;
* ``pyav``: :func:`lavila.data.sampling.video_loader` with the PyAV reader (seek to the keyframe, decode forward,
  drop non-reference frames nobody asked for), also with the frame dropping off, with the eval transform's
  ``Resize(224)`` applied in torch (the default numerics), and with the resize done at decode time by swscale
  (``open_video(short_side=224)``, opt-in: its pixels differ, see the agreement column);
* ``naive``: decode every frame of the chunk, then index.

A 288 px chunk is synthesised by looping the Ego4D media clip (384x288, 30 fps; synthetic frames when the shared
media folder is absent) and encoding it with libx264 (default GOP 250, like ffmpeg-made chunks). Each clip is an
Ego4D-style window (~1 s at a random position, training jitter), read through ``video_loader`` and through the
original's formula (same ``get_frame_ids``, same seeded RNG: same ids). The per-core figure is clips per CPU-second
(``time.process_time``: all threads of the process). Peak memory is the rise of the process's peak RSS during the
row (``/proc/self/clear_refs`` resets it; "-" where that is not available). Pixel agreement is checked after the
timing on a few clips: max (mean) |Δ| in grey levels against decord's frames (against decord's frames resized by
the float ``Resize(224)`` transform for the resize rows).

    python benchmarks/bench_loader.py --threads 2                             # 60 s chunk
    python benchmarks/bench_loader.py --threads 2 --seconds 300 --chunk /tmp/chunk300.mp4   # 5-minute chunk, kept
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from lavila.data.decode import available_backends, decode_all, open_video
from lavila.data.prepare import coded_frame, write_video
from lavila.data.sampling import chunk_path, get_frame_ids, video_loader
from lavila.models.transforms import resize

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("LAVILA_SHARED", REPO.parent / "shared")) / "media"
EGO_CLIP = "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"
VID = "bench"
FPS = 30
CROP = 224


def _source_frames() -> list[np.ndarray]:
    clip = MEDIA / EGO_CLIP
    if clip.exists():
        return [f.numpy() for f in decode_all(clip)]
    rng = np.random.default_rng(0)
    return [
        np.clip(coded_frame(i, 288, 384).astype(int) + rng.integers(0, 40, (288, 384, 3)), 0, 255).astype(np.uint8)
        for i in range(60)
    ]


def make_chunk(path: Path, seconds: float, fps: int = FPS) -> int:
    """Write a 288 px chunk of `seconds` seconds; returns its frame count."""
    frames = _source_frames()
    n = int(seconds * fps)

    def gen() -> Iterator[np.ndarray]:
        for i in range(n):
            # play the clip forwards then backwards so the loop has no hard cut every 2 s
            k = i % (2 * len(frames))
            yield frames[k if k < len(frames) else 2 * len(frames) - 1 - k]

    return write_video(path, gen(), fps, gop=None, crf=23, preset="veryfast")


def _windows(num_frames: int, clips: int, seed: int = 0) -> list[tuple[float, float, int]]:
    """(second, end_second, rng seed): ~1 s windows at random positions, inside the chunk (no next chunk read)."""
    rng = np.random.default_rng(seed)
    last = num_frames / FPS - 1.2
    out = []
    for i in range(clips):
        second = float(rng.uniform(0, last))
        out.append((round(second, 3), round(second + float(rng.uniform(0.8, 1.2)), 3), seed * 100_003 + i))
    return out


# ----------------------------------------------------------------------------------------------------- the paths
def decord_loader(root: Path, second: float, end_second: float, clip_length: int, seed: int,
                  num_threads: int = 1) -> torch.Tensor:
    """The original's `video_loader` for a window inside one chunk (spec §2.4): decord VideoReader + get_batch.

    Frames stay uint8 (the original then casts to float32, which our loader leaves to the transforms).
    """
    import decord

    rng = np.random.default_rng(seed)
    chunk_start = int(second) // 300 * 300
    vr = decord.VideoReader(chunk_path(root, VID, chunk_start), num_threads=num_threads)
    f0 = int(np.round((second - chunk_start) * FPS))
    span = max(int((end_second - second) * FPS), clip_length)
    ids = get_frame_ids(f0, f0 + span, clip_length, jitter=True, rng=rng)
    assert max(ids) < len(vr), "benchmark windows stay inside the chunk"
    return torch.from_numpy(vr.get_batch(ids).asnumpy())


class _CountingDecoder:
    """`open_video` with fixed options that remembers how many frames its readers decoded."""

    def __init__(self, **options) -> None:
        self.options = options
        self.decoded = 0
        self._last = None

    def __call__(self, path: str):
        self._flush()
        self._last = open_video(path, **self.options)
        return self._last

    def _flush(self) -> None:
        if self._last is not None:
            self.decoded += getattr(self._last, "frames_decoded", 0)
            self._last = None

    def take(self) -> int:
        self._flush()
        n, self.decoded = self.decoded, 0
        return n


def lavila_loader(root: Path, second: float, end_second: float, clip_length: int, seed: int,
                  decoder: _CountingDecoder, resize_to: int | None = None) -> torch.Tensor:
    frames = video_loader(root, VID, second, end_second, chunk_len=300, fps=FPS, clip_length=clip_length,
                          jitter=True, decoder=decoder, rng=np.random.default_rng(seed))
    if resize_to:  # the eval transform's first step on the uint8 clip: Resize(short side), [T,H,W,3] layout kept
        frames = resize(frames.permute(0, 3, 1, 2), resize_to).permute(0, 2, 3, 1)
    return frames


def naive_loader(chunk: Path, root: Path, second: float, end_second: float, clip_length: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    f0 = int(np.round(second * FPS))
    ids = get_frame_ids(f0, f0 + max(int((end_second - second) * FPS), clip_length), clip_length, True, rng)
    frames = decode_all(chunk)
    _ = frames[ids]
    return len(frames)


# ----------------------------------------------------------------------------------------------------- measuring
def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> float | None:
    """Reset the peak RSS (Linux >= 4.0) and return the current RSS in MB; None when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def measure(read: Callable[[tuple], int], windows: list[tuple]) -> dict:
    """clips/s, CPU s per clip, frames decoded per clip and peak-RSS rise of one row."""
    rss0 = _reset_peak_rss()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    decoded = 0
    for w in windows:
        decoded += read(w)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    hwm = _proc_status_mb("VmHWM")
    peak = (hwm - rss0) if (rss0 is not None and hwm is not None) else None
    return dict(clips_s=len(windows) / wall, cpu_s=cpu / len(windows), decoded=decoded / len(windows), peak_mb=peak)


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    if a.shape != b.shape:
        return float("inf"), float("inf")
    d = (a.float() - b.float()).abs()
    return float(d.max()), float(d.mean())


def _have_decord() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:
        return False
    return True


def bench(chunk: Path, root: Path, num_frames: int, clip_lengths: list[int], clips: int, naive_clips: int,
          check_clips: int = 4) -> list[dict]:
    rows: list[dict] = []
    have_decord = _have_decord()
    for clip_length in clip_lengths:
        windows = _windows(num_frames, clips, seed=clip_length)
        variants: list[tuple[str, str, Callable[[tuple], torch.Tensor], _CountingDecoder | None]] = []
        if have_decord:
            for threads, label in [(1, "decord"), (0, "decord, num_threads=0 (the original's default)")]:
                fn = functools.partial(decord_loader, root, clip_length=clip_length, num_threads=threads)
                variants.append((label, "full", lambda w, fn=fn: fn(w[0], w[1], seed=w[2]), None))
        for label, opts, resize_to, kind in [
            ("pyav", {}, None, "full"),
            ("pyav, no frame skipping", {"skip_nonref": False}, None, "full"),
            (f"pyav + Resize({CROP}) in torch (uint8)", {}, CROP, "resized"),
            (f"pyav, decode-time resize {CROP} (opt-in)", {"short_side": CROP}, None, "resized"),
        ]:
            dec = _CountingDecoder(backend="pyav", **opts)
            fn = functools.partial(lavila_loader, root, clip_length=clip_length, decoder=dec, resize_to=resize_to)
            variants.append((label, kind, lambda w, fn=fn: fn(w[0], w[1], seed=w[2]), dec))
        if "torchcodec" in available_backends():
            dec = _CountingDecoder(backend="torchcodec")
            fn = functools.partial(lavila_loader, root, clip_length=clip_length, decoder=dec)
            variants.append(("torchcodec", "full", lambda w, fn=fn: fn(w[0], w[1], seed=w[2]), dec))

        # reference pixels for the agreement column: decord's frames, else our reader without frame skipping
        ref_fn = variants[0][2] if have_decord else next(v[2] for v in variants if "no frame skipping" in v[0])
        ref_name = "decord" if have_decord else "pyav without skipping"
        check = windows[:check_clips]
        ref_full = [ref_fn(w) for w in check]
        ref_resized = [resize(f.permute(0, 3, 1, 2).float(), CROP).permute(0, 2, 3, 1) for f in ref_full]

        for label, kind, fn, dec in variants:
            def read(w, fn=fn, dec=dec, clip_length=clip_length) -> int:
                frames = fn(w)
                assert frames.shape[0] == clip_length
                return dec.take() if dec is not None else 0

            row = measure(read, windows)
            diffs = [_diff(fn(w), r) for w, r in zip(check, ref_full if kind == "full" else ref_resized)]
            row.update(path=label, frames=clip_length, max_diff=max(d[0] for d in diffs),
                       mean_diff=statistics.fmean(d[1] for d in diffs), has_decoded=dec is not None,
                       pixel_ref=ref_name + ("" if kind == "full" else f" + float Resize({CROP})"))
            rows.append(row)

        naive = functools.partial(naive_loader, chunk, root, clip_length=clip_length)
        row = measure(lambda w, naive=naive: naive(w[0], w[1], seed=w[2]), windows[:naive_clips])
        row.update(path="naive: decode whole chunk, then index", frames=clip_length, max_diff=None, mean_diff=None,
                   has_decoded=True, pixel_ref="")
        rows.append(row)

        base = next((r for r in rows if r["frames"] == clip_length and r["path"] == "decord"), None)
        for r in rows:
            if r["frames"] == clip_length and base is not None:
                r["x_core"] = base["cpu_s"] / r["cpu_s"]
                r["x_wall"] = r["clips_s"] / base["clips_s"]
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| path | frames/clip | clips/s | CPU s/clip | clips per CPU-s | x decord per core | x decord wall "
        "| peak RSS rise MB | frames decoded/clip | max (mean) abs diff vs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        core = f"{r['x_core']:.2f}x" if "x_core" in r else "-"
        wall = f"{r['x_wall']:.2f}x" if "x_wall" in r else "-"
        peak = f"{max(r['peak_mb'], 0.0):.0f}" if r["peak_mb"] is not None else "-"
        decoded = f"{r['decoded']:.0f}" if r["has_decoded"] else "-"
        diff = f"{r['max_diff']:.1f} ({r['mean_diff']:.3f}) {r['pixel_ref']}" if r["max_diff"] is not None else "-"
        lines.append(
            f"| {r['path']} | {r['frames']} | {r['clips_s']:.2f} | {r['cpu_s']:.3f} | {1 / r['cpu_s']:.2f} | {core} "
            f"| {wall} | {peak} | {decoded} | {diff} |"
        )
    return "\n".join(lines)


def target_lines(rows: list[dict], target: float = 1.5) -> list[str]:
    out = []
    for r in rows:
        if r["path"] == "pyav" and "x_core" in r:
            verdict = "met" if r["x_core"] >= target else "NOT met"
            out.append(f"target >= {target}x decord per core, {r['frames']} frames: {r['x_core']:.2f}x ({verdict})")
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="chunk length to synthesise (default 60)")
    p.add_argument("--clips", type=int, default=20, help="clips per row")
    p.add_argument("--naive-clips", type=int, default=2, help="clips for the (slow) naive row")
    p.add_argument("--clip-lengths", type=int, nargs="+", default=[4, 16])
    p.add_argument("--check-clips", type=int, default=4, help="clips whose pixels are compared (untimed)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the resize); decoders use 1 thread")
    p.add_argument("--chunk", type=Path, default=None,
                   help="keep the synthetic chunk at this path (re-used when it exists) instead of a temp dir")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the temporary chunk tree (default: temp dir)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        chunk = Path(chunk_path(root, VID, 0))
        chunk.parent.mkdir(parents=True)
        t0 = time.perf_counter()
        if args.chunk is not None:
            if not args.chunk.exists():
                make_chunk(args.chunk, args.seconds)
            chunk.symlink_to(args.chunk.resolve())
        else:
            make_chunk(chunk, args.seconds)
        made = time.perf_counter() - t0
        with open_video(chunk, backend="pyav") as reader:
            n = len(reader)
        rows = bench(chunk, root, n, args.clip_lengths, args.clips, args.naive_clips, args.check_clips)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"Chunk: {n} frames ({n / FPS:g} s, 384x288, 30 fps, libx264 veryfast GOP 250; ready in {made:.1f} s). "
        f"{args.clips} clips per row (naive: {args.naive_clips}), training jitter. Backends: "
        f"{', '.join(available_backends())}"
        f"{', decord' if _have_decord() else ' (decord not installed: pip install -e .[bench])'}. "
        f"CPU: {os.cpu_count()} cores, torch {args.threads} threads, decoders 1 thread; load average {load:.1f}."
    )
    table = markdown(rows, header)
    lines = target_lines(rows)
    print(table)
    for line in lines:
        print(line)
    return table + ("\n" + "\n".join(lines) if lines else "")


if __name__ == "__main__":
    main(sys.argv[1:])
