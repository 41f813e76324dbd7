"""Loader benchmark: clips/s and CPU seconds per clip, seek-and-decode vs decoding the whole chunk.

A 288 px chunk is synthesised in a temporary folder by looping the Ego4D media clip (384x288, 30 fps; synthetic
frames when the shared media folder is absent) and encoding it with libx264 (default GOP 250, like ffmpeg-made
chunks). Each clip is an Ego4D-style window (~1 s at a random position) read with `get_frame_ids`, through each
available backend, and through the naive path the reference's decord loader effectively paid for a cold reader
(decode every frame of the chunk, then index).

    python benchmarks/bench_loader.py                 # 60 s chunk, 20 clips per row
    python benchmarks/bench_loader.py --seconds 300   # a full 5-minute chunk (slow to synthesise)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lavila.data.decode import available_backends, decode_all, open_video
from lavila.data.prepare import coded_frame, write_video
from lavila.data.sampling import get_frame_ids

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("LAVILA_SHARED", REPO.parent / "shared")) / "media"
EGO_CLIP = "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"


def _source_frames() -> list[np.ndarray]:
    clip = MEDIA / EGO_CLIP
    if clip.exists():
        return [f.numpy() for f in decode_all(clip)]
    rng = np.random.default_rng(0)
    return [
        np.clip(coded_frame(i, 288, 384).astype(int) + rng.integers(0, 40, (288, 384, 3)), 0, 255).astype(np.uint8)
        for i in range(60)
    ]


def make_chunk(path: Path, seconds: float, fps: int = 30) -> int:
    """Write a 288 px chunk of `seconds` seconds; returns its frame count."""
    frames = _source_frames()
    n = int(seconds * fps)

    def gen() -> Iterator[np.ndarray]:
        for i in range(n):
            # play the clip forwards then backwards so the loop has no hard cut every 2 s
            k = i % (2 * len(frames))
            yield frames[k if k < len(frames) else 2 * len(frames) - 1 - k]

    return write_video(path, gen(), fps, gop=None, crf=23, preset="veryfast")


def _windows(num_frames: int, clips: int, clip_length: int, seed: int = 0) -> list[list[int]]:
    """Ego4D-like windows: ~1 s (30 frames, at least clip_length) at random positions in the chunk."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(clips):
        span = max(30, clip_length)
        start = int(rng.integers(0, num_frames - span))
        out.append(get_frame_ids(start, start + span, clip_length, jitter=True, rng=rng))
    return out


def _measure(read, windows: list[list[int]]) -> tuple[float, float, float]:
    """(clips/s, CPU s per clip, frames decoded per clip)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    decoded = 0
    for ids in windows:
        decoded += read(ids)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return len(windows) / wall, cpu / len(windows), decoded / len(windows)


def bench(chunk: Path, num_frames: int, clip_lengths: list[int], clips: int, naive_clips: int) -> list[dict]:
    rows = []
    variants: list[tuple[str, dict]] = [(b, {}) for b in available_backends()]
    variants.append(("pyav + decode-time resize (short side 224)", {"backend": "pyav", "short_side": 224}))
    for clip_length in clip_lengths:
        windows = _windows(num_frames, clips, clip_length)
        for name, opts in variants:
            opts = {"backend": name, **opts} if not opts else opts

            def read(ids, opts=opts) -> int:
                reader = open_video(chunk, **opts)  # a fresh reader per clip, as a dataset does
                frames = reader.get_frames(ids)
                assert frames.shape[0] == len(ids)
                decoded = getattr(reader, "frames_decoded", 0)
                reader.close()
                return decoded

            rate, cpu, decoded = _measure(read, windows)
            rows.append(dict(path=name, frames=clip_length, clips_s=rate, cpu_s=cpu, decoded=decoded))

        def naive(ids) -> int:
            frames = decode_all(chunk)
            _ = frames[ids]
            return len(frames)

        rate, cpu, decoded = _measure(naive, windows[:naive_clips])
        rows.append(
            dict(
                path="naive: decode whole chunk, then index",
                frames=clip_length,
                clips_s=rate,
                cpu_s=cpu,
                decoded=decoded,
            )
        )
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| path | frames/clip | clips/s | CPU s/clip | frames decoded/clip |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['frames']} | {r['clips_s']:.2f} | {r['cpu_s']:.3f} | {r['decoded']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="chunk length to synthesise (default 60)")
    p.add_argument("--clips", type=int, default=20, help="clips per seek-and-decode row")
    p.add_argument("--naive-clips", type=int, default=2, help="clips for the (slow) naive row")
    p.add_argument("--clip-lengths", type=int, nargs="+", default=[4, 16])
    p.add_argument("--tmp", type=Path, default=None, help="folder for the synthetic chunk (default: a temp dir)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        chunk = Path(tmp) / "0.mp4"
        t0 = time.perf_counter()
        n = make_chunk(chunk, args.seconds)
        made = time.perf_counter() - t0
        rows = bench(chunk, n, args.clip_lengths, args.clips, args.naive_clips)
    header = (
        f"Chunk: {n} frames ({args.seconds:g} s, 384x288, 30 fps, libx264 GOP 250; synthesised in {made:.1f} s). "
        f"Backends available: {', '.join(available_backends())}. CPU: {os.cpu_count()} cores, 1 decoder thread."
    )
    table = markdown(rows, header)
    print(table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
