"""Which frames a clip reads: segment sampling, the chunked Ego4D loader, dense/strided and sparse sampling.

Every rule here reproduces the reference (LaViLa `lavila/data/datasets.py`) to the frame, because a one-frame shift
changes what the released checkpoints see; the conformance fixture `metrics_*.json` (sections `get_frame_ids` and
`chunked_video_loader`) pins it. Frame ids are plain ints; decoding lives in :mod:`lavila.data.decode`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lavila.data.decode import MissingVideoError, VideoReader, open_video

# A decoder is anything that opens a path and returns a VideoReader; tests pass a fake that logs the reads.
Decoder = Callable[[str], VideoReader]
RNG = np.random.Generator | np.random.RandomState | None

PAD_FRAME = -1  # id marking a zero padding frame in strided sampling of too-short videos (reference behaviour)


def close_reader(reader: object) -> None:
    """Close a reader now. PyAV readers hold a generator that references them (a cycle), so without this they are
    freed only by the garbage collector — possibly inside a forked DataLoader worker, where finalising FFmpeg
    objects inherited from the parent can deadlock."""
    close = getattr(reader, "close", None)
    if close is not None:
        close()


def _randint_inclusive(rng: RNG, low: int, high: int) -> int:
    """Uniform integer in [low, high]; `rng=None` uses numpy's global RNG like the reference does."""
    if rng is None:
        return int(np.random.randint(low, high + 1))
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return int(rng.randint(low, high + 1))


def get_frame_ids(start: int, end: int, num_segments: int, jitter: bool = False, rng: RNG = None) -> list[int]:
    """Segment-based sampling over the half-open frame range [start, end) (spec §3).

    The range is split into `num_segments` equal float segments whose bounds are rounded half-to-even (`np.round`);
    each segment contributes its midpoint `(a+b)//2`, or a uniform draw in [a, b] when jittering. Ids may repeat
    when the range is shorter than `num_segments` — the reference allows that. A range that starts below 0 or ends
    before it starts is an error (the reference returned negative ids, i.e. frames counted from the end).
    """
    if num_segments <= 0:
        raise ValueError(f"get_frame_ids: num_segments must be positive, got {num_segments}")
    if start < 0 or end < start:
        raise ValueError(f"get_frame_ids: frame range [{start}, {end}) must have 0 <= start <= end")
    seg_size = float(end - start - 1) / num_segments
    ids = []
    for i in range(num_segments):
        a = int(np.round(seg_size * i) + start)
        b = int(np.round(seg_size * (i + 1)) + start)
        b = min(b, end)
        ids.append(_randint_inclusive(rng, a, b) if jitter else (a + b) // 2)
    if min(ids) < 0:  # only [0, 0): the reference's segments of an empty range reach back to -1
        raise ValueError(f"get_frame_ids: the frame range [{start}, {end}) is empty")
    return ids


def chunk_path(root: str | os.PathLike, vid: str, chunk_start: int) -> str:
    """`<root>/<vid>.mp4/<chunk_start>.mp4`: the layout written by `lavila prepare-ego4d` (spec §2.2)."""
    return os.path.join(root, f"{vid}.mp4", f"{chunk_start}.mp4")


def video_loader(
    root: str | os.PathLike,
    vid: str,
    second: float,
    end_second: float | None,
    chunk_len: int = 300,
    fps: float = 30,
    clip_length: int = 4,
    jitter: bool = False,
    decoder: Decoder | None = None,
    rng: RNG = None,
) -> torch.Tensor:
    """Read `clip_length` frames of the window [second, end_second] of an Ego4D video, as uint8 [T,H,W,3].

    Times are absolute seconds in the full video; the frames come from 5-minute chunks (spec §2.4). A window that
    crosses a chunk boundary reads the rest from the next chunk at `id % len(chunk)` (clamped to its last frame); when
    there is no next chunk, `clip_length` frames are re-sampled from the tail of this chunk. Both rules are the
    reference's, so a chunk that is a frame short (449 instead of 450 frames) is handled rather than indexing past
    the end. Unlike the reference, a decode error is raised (`VideoDecodeError`), never replaced by frame 0.

    `chunk_len=-1` opens `<root>/<vid>.mp4` directly (Charades-Ego trimmed); with `fps=-1` the decoder's average fps
    converts seconds to frames.
    """
    open_reader = decoder or open_video
    if chunk_len == -1:
        return _whole_video_loader(open_reader, root, vid, second, end_second, fps, clip_length, jitter, rng)
    if end_second is None:
        raise ValueError("video_loader: end_second is required for chunked videos")

    chunk_start = int(second) // chunk_len * chunk_len
    vr = open_reader(chunk_path(root, vid, chunk_start))
    try:
        return _read_chunked(
            open_reader, vr, root, vid, second, end_second, chunk_start, chunk_len, fps, clip_length, jitter, rng
        )
    finally:
        close_reader(vr)


def _read_chunked(
    open_reader: Decoder,
    vr: VideoReader,
    root: str | os.PathLike,
    vid: str,
    second: float,
    end_second: float,
    chunk_start: int,
    chunk_len: int,
    fps: float,
    clip_length: int,
    jitter: bool,
    rng: RNG,
) -> torch.Tensor:
    second_offset = second - chunk_start
    if fps == -1:
        fps = vr.fps
    frame_offset = int(np.round(second_offset * fps))
    total_duration = max(int((end_second - second) * fps), clip_length)
    frame_ids = get_frame_ids(frame_offset, frame_offset + total_duration, clip_length, jitter, rng)

    n = len(vr)
    if max(frame_ids) < n:
        return vr.get_frames(frame_ids)

    # The window runs past this chunk. The reference reads the in-chunk part before opening the next chunk; keeping
    # that order keeps the sequence of reads identical to the fixture's.
    part1_ids = [i for i in frame_ids if i < n]
    part1 = vr.get_frames(part1_ids) if part1_ids else None
    try:
        vr2 = open_reader(chunk_path(root, vid, chunk_start + chunk_len))
    except MissingVideoError:
        # Last chunk of the video: re-sample inside this chunk, up to its last frame.
        tail_ids = get_frame_ids(min(frame_offset, n - 1), n, clip_length, jitter, rng)
        return vr.get_frames(tail_ids)
    try:
        part2_ids = [min(i % n, len(vr2) - 1) for i in frame_ids if i >= n]
        part2 = vr2.get_frames(part2_ids)
    finally:
        close_reader(vr2)
    return part2 if part1 is None else torch.cat([part1, part2], dim=0)


def _whole_video_loader(
    open_reader: Decoder,
    root: str | os.PathLike,
    vid: str,
    second: float,
    end_second: float | None,
    fps: float,
    clip_length: int,
    jitter: bool,
    rng: RNG,
) -> torch.Tensor:
    vr = open_reader(os.path.join(root, f"{vid}.mp4"))
    try:
        return _read_whole(vr, vid, second, end_second, fps, clip_length, jitter, rng)
    finally:
        close_reader(vr)


def _read_whole(
    vr: VideoReader,
    vid: str,
    second: float,
    end_second: float | None,
    fps: float,
    clip_length: int,
    jitter: bool,
    rng: RNG,
) -> torch.Tensor:
    n = len(vr)
    duration = n / vr.fps
    end_second = duration if end_second is None else min(end_second, duration)
    if fps == -1:
        fps = vr.fps
    if end_second <= second:
        raise ValueError(
            f"video_loader: window [{second}, {end_second}] of {vid} is empty (video lasts {duration:.3f} s)"
        )
    frame_offset = int(np.round(second * fps))
    total_duration = max(int((end_second - second) * fps), clip_length)
    if frame_offset < 0 or frame_offset >= n:
        raise ValueError(f"video_loader: window [{second}, {end_second}] of {vid} starts past its {n} frames")
    frame_ids = get_frame_ids(frame_offset, min(frame_offset + total_duration, n), clip_length, jitter, rng)
    if max(frame_ids) >= n or min(frame_ids) < 0:
        raise ValueError(f"video_loader: window [{second}, {end_second}] of {vid} starts past its {n} frames")
    return vr.get_frames(frame_ids)


def video_loader_by_frames(
    root: str | os.PathLike, vid: str, frame_ids: Sequence[int], decoder: Decoder | None = None
) -> torch.Tensor:
    """Read explicit frame ids of `<root>/<vid>` as uint8 [T,H,W,3] (EK-100, EGTEA, Charades-Ego, demos).

    Ids equal to :data:`PAD_FRAME` become black frames: that is the reference's zero padding of videos shorter than
    the strided window, not a substitute for a failed decode (failures raise `VideoDecodeError`).
    """
    vr = (decoder or open_video)(os.path.join(root, vid))
    try:
        return read_with_padding(vr, frame_ids)
    finally:
        close_reader(vr)


def read_with_padding(vr: VideoReader, frame_ids: Sequence[int]) -> torch.Tensor:
    """`vr.get_frames(ids)` where ids equal to PAD_FRAME yield zero frames of the video's size."""
    real = [i for i in frame_ids if i != PAD_FRAME]
    if len(real) == len(frame_ids):
        return vr.get_frames(list(frame_ids))
    frames = vr.get_frames(real) if real else None
    if frames is None:
        first = vr.get_frames([0])
        shape = first.shape[1:]
    else:
        shape = frames.shape[1:]
    out = torch.zeros((len(frame_ids), *shape), dtype=torch.uint8)
    k = 0
    for j, i in enumerate(frame_ids):
        if i != PAD_FRAME:
            out[j] = frames[k]
            k += 1
    return out


def seconds_to_frame_range(start_sec: float, end_sec: float, fps: float) -> tuple[int, int]:
    """Action window in frames, as EK-100 and Charades-Ego compute it: round the start, ceil the end."""
    return int(np.round(fps * start_sec)), int(np.ceil(fps * end_sec))


def strided_frame_ids(
    num_frames: int,
    clip_length: int,
    clip_stride: int,
    num_clips: int = 1,
    jitter: bool = False,
    rng: RNG = None,
) -> list[int]:
    """Dense/strided sampling (EGTEA always, Charades-Ego without `--sparse-sample`; spec §3 table).

    Training (`jitter=True`, one clip): a random start in [0, len-L], then `clip_length` ids `clip_stride` apart.
    Evaluation: `num_clips` starts `linspace(0, len-L, num_clips)` truncated to int, ids concatenated clip-major.
    A video shorter than the window L = clip_length*clip_stride is read whole, zero-padded to L and strided; padded
    positions are :data:`PAD_FRAME`, and at evaluation the clip repeats `num_clips` times.
    """
    window = clip_length * clip_stride
    if num_frames < window:
        one = [i if i < num_frames else PAD_FRAME for i in range(0, window, clip_stride)]
        return one if jitter else one * num_clips
    if jitter:
        if num_clips != 1:
            raise ValueError("strided_frame_ids: training samples exactly one clip (num_clips=1)")
        s = _randint_inclusive(rng, 0, num_frames - window)
        return list(range(s, s + window, clip_stride))
    ids: list[int] = []
    for s in np.linspace(0, num_frames - window, num_clips, dtype=int):
        ids.extend(range(int(s), int(s) + window, clip_stride))
    return ids


def sparse_frame_ids(
    length: float, clip_length: int, num_clips: int = 1, jitter: bool = False, rng: RNG = None
) -> list[int]:
    """Sparse sampling over a whole video (Charades-Ego `--sparse-sample`): `num_clips*clip_length` segments.

    `length` may be a float frame count (Charades untrimmed uses fps*duration); it goes through
    :func:`get_frame_ids` unchanged, as in the reference.
    """
    return get_frame_ids(0, length, num_clips * clip_length, jitter, rng)  # type: ignore[arg-type]


def chunk_starts(duration_sec: float, chunk_len: int = 300) -> list[int]:
    """Chunk start seconds {0, L, 2L, ...} covering a video of `duration_sec` seconds."""
    return list(range(0, max(1, math.ceil(duration_sec / chunk_len)) * chunk_len, chunk_len))


__all__ = [
    "PAD_FRAME",
    "chunk_path",
    "close_reader",
    "chunk_starts",
    "get_frame_ids",
    "read_with_padding",
    "seconds_to_frame_range",
    "sparse_frame_ids",
    "strided_frame_ids",
    "video_loader",
    "video_loader_by_frames",
]


def window_bounds(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """The one video-window planner (``lavila index``, ``lavila narrate``): ``(start, end)`` seconds.

    Full windows ``[k*stride, k*stride + window]`` that fit in the video, plus one window aligned to the video's end
    when the tail is not covered, so every window has the length the model was trained on; a video shorter than one
    window gives one window over all of it. Starts are ``k * stride`` (no accumulated float error), rounded to 1 us.
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if duration <= 0:
        return []
    if duration <= window:
        return [(0.0, round(duration, 6))]
    count = int(math.floor((duration - window) / stride + 1e-6)) + 1
    starts = [k * stride for k in range(count)]
    if starts[-1] + window < duration - 1e-6:  # cover the tail with one window aligned to the end
        starts.append(duration - window)
    return [(round(s, 6), round(min(s + window, duration), 6)) for s in starts]
