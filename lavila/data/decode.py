"""Video decoding behind one small interface: `open_video(path, backend) -> VideoReader`.

Why not decode whole files: a training sample needs 4 frames out of a 5-minute chunk (9000 frames), so the PyAV
backend seeks to the keyframe before the first requested frame and decodes forward only as far as needed, keeping
the decoder running across requested frames of the same GOP. Frames stay uint8 `[T,H,W,3]` RGB; conversion to float
happens in the transforms (or on the model's device).

Why it also skips frames: between the keyframe and a requested frame most of the decode is of frames nobody asked
for, and about half of them (x264's non-reference B-frames, its default GOP structure) are never used to predict
another frame. The PyAV reader tells FFmpeg to drop those (``skip_frame=NONREF``) for every packet that is not a
requested frame or just before one, which leaves every returned picture bit-identical (a non-reference frame by
definition influences no other) and decodes ~1.6x fewer macroblocks per clip. Whenever the answer for a frame id is
not the frame carrying exactly that id (variable frame rate, a stream that ends early) and a dropped frame could
have been it, that id is decoded again without skipping, so the "frame on screen at t" rules do not change.

Backends:
* ``pyav`` (default here): PyAV, which bundles FFmpeg. Picks FFmpeg's *best* video stream (what the ffmpeg CLI
  decodes by default, e.g. stream #3 of nasa_13013.mp4), applies the display rotation, handles non-integer fps and
  containers without a frame count (mkv/webm: frames are counted from packets, without decoding).
* ``torchcodec``: used when its native libraries load (its wheels need a matching torch build; on a CPU-only torch
  the import fails and ``auto`` falls back to PyAV).

Every failure is a :class:`VideoDecodeError` naming the file, a machine-readable ``kind`` and a reason, so datasets
can report and count bad videos instead of feeding zeros to the model.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np
import torch

# Failure kinds, in a fixed order so counters can live in shared-memory arrays (see lavila.data.robust).
FAILURE_KINDS = ("missing", "empty", "unreadable", "no_video_stream", "truncated", "decode_error", "out_of_range")


class VideoDecodeError(RuntimeError):
    """A video could not be opened or a requested frame could not be decoded."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "decode_error") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        self.kind = kind if kind in FAILURE_KINDS else "decode_error"
        super().__init__(f"{self.path}: {reason} [{self.kind}]")

    def __reduce__(self):  # keep path/reason/kind when the error crosses a DataLoader worker boundary
        return (type(self), (self.path, self.reason, self.kind))


class MissingVideoError(VideoDecodeError):
    """The file does not exist. Separate because the chunked loader treats a missing *next* chunk as 'last chunk'."""

    def __init__(self, path: str | os.PathLike, reason: str = "file not found", kind: str = "missing") -> None:
        super().__init__(path, reason, "missing")


@runtime_checkable
class VideoReader(Protocol):
    """What samplers need from a decoder. A test double only has to provide these three members."""

    fps: float

    def __len__(self) -> int: ...

    def get_frames(self, ids: Sequence[int]) -> torch.Tensor:
        """uint8 [len(ids),H,W,3] RGB in the requested order; repeated and unsorted ids are allowed."""
        ...


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise MissingVideoError(path)
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file", "unreadable")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)", "empty")


def _resized_hw(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    """Short side -> `short_side`, long side int(short_side*long/short): the rule of the eval Resize (spec §4)."""
    if not short_side or min(h, w) == short_side:
        return h, w
    if h <= w:
        return short_side, int(short_side * w / h)
    return int(short_side * h / w), short_side


class _DecodeStats:
    __slots__ = ("frames_decoded", "packet_errors", "last_error")

    def __init__(self) -> None:
        self.frames_decoded = 0
        self.packet_errors = 0
        self.last_error: str | None = None


class _SkipPlan:
    """Which packets the decoder may drop if they hold a non-reference frame (see the module docstring).

    Holds plain numbers only, never the reader, for the same no-reference-cycle reason as :func:`_decode_packets`.
    `wanted` are the sorted frame ids of the current request; a packet within `guard` frames before a wanted id, in
    the last `tail` frames of the stream, or without a timestamp is always decoded. `candidates` lists the frame
    ids of packets decoded with skipping on since the last seek (dropped or not: FFmpeg does not say), so a caller
    can tell whether a dropped frame might have been the right answer.
    """

    __slots__ = ("enabled", "wanted", "guard", "tail_start", "start_pts", "scale", "mode", "candidates")

    def __init__(self, enabled: bool, start_pts: int, scale: float, tail_start: int, guard: int = 2) -> None:
        self.enabled = enabled
        self.wanted: list[int] = []
        self.guard = guard
        self.tail_start = tail_start
        self.start_pts = start_pts
        self.scale = scale  # time_base * frame rate: pts units -> frame ids
        self.mode = "DEFAULT"
        self.candidates: list[int] = []

    def may_skip(self, pts: int | None) -> bool:
        if not self.enabled or pts is None:
            return False
        idx = int(round((pts - self.start_pts) * self.scale))
        if idx >= self.tail_start:
            return False
        k = bisect.bisect_left(self.wanted, idx)
        if k < len(self.wanted) and self.wanted[k] - idx <= self.guard:
            return False
        self.candidates.append(idx)
        return True

    def dropped_between(self, lo: int, hi: int) -> bool:
        """Might a frame with id in (lo, hi] have been dropped since the last seek?"""
        return any(lo < c <= hi for c in self.candidates)


def _decode_packets(container, stream, stats: _DecodeStats, plan: _SkipPlan | None = None) -> Iterator:
    """Decoded frames from the current demuxer position; a corrupt packet is counted and skipped like ffmpeg.

    A free function (not a method) so the live generator does not reference the reader: no reference cycle, so a
    dropped reader closes its file at once instead of waiting for the garbage collector — which may otherwise run
    inside a forked DataLoader worker and finalise FFmpeg state inherited from the parent (a deadlock we hit).
    With a `plan`, non-reference frames of packets the plan does not need are dropped by the codec unseen.
    """
    import av

    ctx = stream.codec_context
    for packet in container.demux(stream):
        if plan is not None:
            mode = "NONREF" if plan.may_skip(packet.pts) else "DEFAULT"
            if mode != plan.mode:  # read per NAL unit by FFmpeg: takes effect for this packet (slice threads)
                ctx.skip_frame = mode
                plan.mode = mode
        try:
            frames = packet.decode()
        except av.error.FFmpegError as err:
            stats.packet_errors += 1
            stats.last_error = str(err)
            continue
        stats.frames_decoded += len(frames)
        yield from frames


@lru_cache(maxsize=1)
def single_thread_scaling() -> dict[str, int]:
    """``{"threads": 1}`` for PyAV's frame conversions where PyAV takes the option (older releases scale on one
    thread anyway and reject it): see :meth:`PyAVReader._to_array` for why a thread pool must not be used."""
    import av

    try:
        av.VideoFrame(16, 16, "yuv420p").to_ndarray(format="rgb24", threads=1)
    except TypeError:
        return {}
    return {"threads": 1}


class PyAVReader:
    """Random access to the frames of one video stream with PyAV.

    `tail_tolerance`: a stream that ends up to this many frames before the count its header promises is treated as
    complete and the missing tail frames are served as the last decoded frame (re-encoded chunks are often one frame
    short). A bigger shortfall — a truncated download — raises ``VideoDecodeError(kind="truncated")``.

    `skip_nonref` (default on; only with ``threads=1``, where a change of FFmpeg's ``skip_frame`` applies to the very
    next packet): drop non-reference frames that no request needs. Returned frames are identical either way; off
    only to measure what it saves.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        stream_index: int | None = None,
        short_side: int | None = None,
        threads: int = 1,
        rotate: bool = True,
        tail_tolerance: int = 2,
        interpolation: str = "BILINEAR",
        skip_nonref: bool = True,
    ) -> None:
        import av

        self.path = os.fspath(path)
        _check_file(self.path)
        try:
            self._container = av.open(self.path)
        except av.error.FileNotFoundError as err:
            raise MissingVideoError(self.path) from err
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise VideoDecodeError(self.path, f"cannot open as a video: {err}", "unreadable") from err
        try:
            self._stream = self._select_stream(stream_index)
        except Exception:
            self._container.close()
            raise
        try:
            self._init_metadata(threads)
        except Exception:
            self._container.close()
            raise
        self._short_side = short_side
        self._rotate = rotate
        self._tail_tolerance = max(0, int(tail_tolerance))
        self._interpolation = interpolation
        self._rot_k: int | None = None  # number of counter-clockwise quarter turns, learnt from the first frame
        self._out_hw: tuple[int, int] | None = None
        # Decoder state. `_iter` yields frames from the current demuxer position; None means "at the start of the
        # stream" (fresh) unless `_exhausted`, in which case the next request must seek.
        self._iter: Iterator | None = None
        self._exhausted = False
        self._pos: int | None = -1  # index of the last decoded frame; -1 before the first; None right after a seek
        self._prev = None  # last decoded av.VideoFrame, kept unconverted until it is needed
        self._decoded_max = -1
        self._stats = _DecodeStats()
        self._skip_nonref = bool(skip_nonref) and int(threads) == 1
        self._plan = _SkipPlan(
            self._skip_nonref,
            self._start_pts,
            float(self._tb * self._rate),
            tail_start=self._num_frames - self._tail_tolerance - 1,
        )

    def _init_metadata(self, threads: int) -> None:
        stream = self._stream
        stream.codec_context.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = max(0, int(threads))
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoDecodeError(self.path, "video stream has no frame rate", "unreadable")
        self._rate = Fraction(rate)
        self.fps = float(self._rate)
        self._tb = Fraction(stream.time_base)
        self._start_pts = stream.start_time or 0
        self._stats = _DecodeStats()
        self._num_frames = stream.frames if stream.frames and stream.frames > 0 else self._count_packets()
        self._keyframes = self._keyframes_from_index()

    # ----------------------------------------------------------------------------------------------- metadata
    def _select_stream(self, stream_index: int | None):
        streams = self._container.streams
        if stream_index is not None:
            matches = [s for s in streams.video if s.index == stream_index]
            if not matches:
                raise VideoDecodeError(self.path, f"stream #{stream_index} is not a video stream", "no_video_stream")
            return matches[0]
        if not streams.video:
            raise VideoDecodeError(self.path, "no video stream", "no_video_stream")
        try:
            return streams.best("video")  # av_find_best_stream: what the ffmpeg CLI picks, not simply the first
        except Exception:
            return streams.video[0]

    def _count_packets(self) -> int:
        """Frame count for containers whose header has none (mkv/webm): count packets, no decoding."""
        n = 0
        try:
            for packet in self._container.demux(self._stream):
                if packet.size:
                    n += 1
        except Exception as err:  # a damaged file: keep what was counted, decoding will report the damage
            self._stats.last_error = str(err)
        self._container.seek(0)
        if n == 0:
            raise VideoDecodeError(self.path, "video stream has no packets", "unreadable")
        return n

    def _keyframes_from_index(self) -> list[int] | None:
        """Keyframe frame indices from the demuxer's index (mp4 sample table) when it lists every frame."""
        try:
            entries = self._stream.index_entries
            if len(entries) != self._num_frames:
                return None
            return [i for i, e in enumerate(entries) if e.is_keyframe] or None
        except Exception:
            return None

    def __len__(self) -> int:
        return self._num_frames

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of returned frames (after rotation and optional resize)."""
        if self._out_hw is None:
            self.get_frames([0])
        assert self._out_hw is not None
        return self._out_hw

    def close(self) -> None:
        self._iter = None
        self._prev = None
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()

    def __del__(self) -> None:
        # Close FFmpeg state while still in the process that opened it (see _decode_packets).
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> PyAVReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------- decoding
    def _index_of(self, frame, fallback: int) -> int:
        if frame.pts is None:
            return fallback
        return int(round((frame.pts - self._start_pts) * self._tb * self._rate))

    @property
    def frames_decoded(self) -> int:
        """Frames the codec produced so far: what seeking saves (tests, benchmarks)."""
        return self._stats.frames_decoded

    def _frames(self) -> Iterator:
        self._plan.candidates.clear()
        return _decode_packets(self._container, self._stream, self._stats, self._plan)

    @property
    def frames_skippable(self) -> int:
        """Packets decoded with non-reference frames allowed to be dropped since the last seek (benchmarks)."""
        return len(self._plan.candidates)

    def _seek(self, target: int, margin_frames: int = 0) -> None:
        frame_idx = max(0, target - margin_frames)
        pts = self._start_pts + int(Fraction(frame_idx) / (self._rate * self._tb))
        self._container.seek(pts, backward=True, any_frame=False, stream=self._stream)
        self._iter = self._frames()
        self._exhausted = False
        self._pos = -1 if frame_idx == 0 else None  # unknown until the first frame arrives
        self._prev = None

    def _needs_seek(self, t: int) -> bool:
        if self._exhausted:
            return True
        pos = -1 if self._pos is None else self._pos
        if t < pos or (t == pos and self._prev is None):
            return True  # the decoder only moves forward
        if self._keyframes:
            return self._keyframe_before(t) > pos + 1  # a keyframe after the current position: skip ahead
        return t - pos > 2 * self.fps  # no index: decoding up to ~2 s forward is cheaper than a blind seek

    def _keyframe_before(self, t: int) -> int:
        assert self._keyframes is not None
        lo, hi = 0, len(self._keyframes) - 1
        best = self._keyframes[0]
        while lo <= hi:
            mid = (lo + hi) // 2
            if self._keyframes[mid] <= t:
                best = self._keyframes[mid]
                lo = mid + 1
            else:
                hi = mid - 1
        return best

    def _to_array(self, frame) -> np.ndarray:
        if self._rot_k is None:
            rotation = getattr(frame, "rotation", 0) if self._rotate else 0
            self._rot_k = int(round((rotation or 0) / 90)) % 4
            h, w = frame.height, frame.width
            if self._rot_k % 2:
                h, w = w, h
            self._out_hw = _resized_hw(h, w, self._short_side)
        oh, ow = self._out_hw
        ch, cw = (ow, oh) if self._rot_k % 2 else (oh, ow)  # size in the coded (unrotated) orientation
        # threads=1: PyAV >= 15 on FFmpeg 8 scales with a thread pool by default (threads=0, auto), held by a
        # reformatter that outlives the frame; a DataLoader worker forked after the parent scaled a frame inherits
        # that pool without its threads and hangs in its first conversion. Loader workers are the parallelism here.
        if (ch, cw) == (frame.height, frame.width):
            arr = frame.to_ndarray(format="rgb24", **single_thread_scaling())
        else:
            arr = frame.to_ndarray(format="rgb24", width=cw, height=ch, interpolation=self._interpolation,
                                   **single_thread_scaling())
        if self._rot_k:
            arr = np.ascontiguousarray(np.rot90(arr, k=self._rot_k))
        return arr

    def get_frames(self, ids: Sequence[int]) -> torch.Tensor:
        ids = [int(i) for i in ids]
        if not ids:
            h, w = self._out_hw or (0, 0)
            return torch.empty((0, h, w, 3), dtype=torch.uint8)
        n = self._num_frames
        bad = [i for i in ids if i < 0 or i >= n]
        if bad:
            raise VideoDecodeError(self.path, f"frame ids {bad[:5]} outside [0, {n})", "out_of_range")
        import av

        got: dict[int, np.ndarray] = {}
        self._plan.wanted = sorted(set(ids))
        try:
            for t in self._plan.wanted:
                got[t] = self._decode_one(t)
        except av.error.FFmpegError as err:  # seek/demux failures outside a single packet
            self._iter, self._exhausted = None, True
            raise VideoDecodeError(self.path, f"decoding frames {ids[:8]} failed: {err}", "decode_error") from err
        return torch.from_numpy(np.stack([got[i] for i in ids]))

    def _decode_one(self, t: int) -> np.ndarray:
        if self._exhausted and self._prev is not None and self._within_tail(t):
            if self._plan.dropped_between(self._decoded_max, t):
                return self._decode_without_skipping(t)
            return self._to_array(self._prev)
        if self._needs_seek(t):
            self._seek(t)
        if self._iter is None:  # fresh reader: decode from the start of the stream
            self._iter = self._frames()
        if self._pos == t and self._prev is not None:
            return self._to_array(self._prev)
        return self._decode_forward(t)

    def _decode_forward(self, t: int) -> np.ndarray:
        reseeks = 0
        while True:
            frame = next(self._iter, None)
            if frame is None:
                if self._plan.dropped_between(self._decoded_max, t):
                    return self._decode_without_skipping(t)
                return self._at_end_of_stream(t)
            first_after_seek = self._pos is None
            idx = self._index_of(frame, (-1 if self._pos is None else self._pos) + 1)
            if first_after_seek and idx > t and reseeks < 3:
                # The demuxer landed after the target (B-frame timestamps, sparse index): back off and retry.
                reseeks += 1
                self._seek(t, margin_frames=int(self.fps * 2**reseeks))
                continue
            prev, prev_pos = self._prev, self._pos
            self._pos, self._prev = idx, frame
            self._decoded_max = max(self._decoded_max, idx)
            if idx == t:
                return self._to_array(frame)
            if idx > t:
                # No frame carries index t (variable frame rate, dropped frame): the frame on screen at t is the
                # previous one, or this one when nothing earlier was decoded.
                keep_prev = prev is not None and prev_pos is not None and prev_pos < t
                if self._plan.dropped_between(prev_pos if keep_prev else -1, t):
                    return self._decode_without_skipping(t)  # a dropped frame may have been the one on screen
                return self._to_array(prev if keep_prev else frame)

    def _decode_without_skipping(self, t: int) -> np.ndarray:
        """Frame t decoded with every frame kept: the slow, exact path when a skipped frame might be the answer."""
        self._plan.enabled = False
        try:
            self._seek(t)  # also forgets the skip candidates, so this cannot recurse
            return self._decode_forward(t)
        finally:
            self._plan.enabled = self._skip_nonref

    def _within_tail(self, t: int) -> bool:
        last = self._decoded_max
        return last >= 0 and t > last and self._num_frames - (last + 1) <= self._tail_tolerance

    def _at_end_of_stream(self, t: int) -> np.ndarray:
        self._exhausted = True
        if self._prev is not None and self._within_tail(t):
            return self._to_array(self._prev)
        last = self._decoded_max
        detail = f"; last error: {self._stats.last_error}" if self._stats.last_error else ""
        raise VideoDecodeError(
            self.path,
            f"frame {t} could not be decoded: the stream ended after frame {last} but the header promises "
            f"{self._num_frames} frames ({self._stats.packet_errors} corrupt packets){detail}",
            "truncated",
        )


class TorchCodecReader:
    """torchcodec's `VideoDecoder` behind the same interface (frames NHWC uint8)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        stream_index: int | None = None,
        short_side: int | None = None,
        threads: int = 1,
        seek_mode: str = "approximate",
    ) -> None:
        self.path = os.fspath(path)
        _check_file(self.path)
        VideoDecoder = _torchcodec_decoder_class()
        if VideoDecoder is None:
            raise VideoDecodeError(self.path, f"torchcodec unavailable: {torchcodec_status()}", "unreadable")
        try:
            self._dec = VideoDecoder(
                self.path,
                stream_index=stream_index,
                dimension_order="NHWC",
                num_ffmpeg_threads=threads,
                seek_mode=seek_mode,
            )
            meta = self._dec.metadata
            self.fps = float(meta.average_fps)
            self._num_frames = int(meta.num_frames)
        except Exception as err:
            raise VideoDecodeError(self.path, f"cannot open as a video: {err}", "unreadable") from err
        self._short_side = short_side

    def __len__(self) -> int:
        return self._num_frames

    def close(self) -> None:
        self._dec = None

    def get_frames(self, ids: Sequence[int]) -> torch.Tensor:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if i < 0 or i >= self._num_frames]
        if bad:
            raise VideoDecodeError(self.path, f"frame ids {bad[:5]} outside [0, {self._num_frames})", "out_of_range")
        try:
            frames = self._dec.get_frames_at(indices=ids).data
        except Exception as err:
            raise VideoDecodeError(self.path, f"decoding frames {ids[:8]} failed: {err}", "decode_error") from err
        if self._short_side:
            h, w = frames.shape[1:3]
            oh, ow = _resized_hw(h, w, self._short_side)
            if (oh, ow) != (h, w):
                x = frames.permute(0, 3, 1, 2).float()
                x = torch.nn.functional.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)
                frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return frames


@lru_cache(maxsize=1)
def _torchcodec_probe() -> tuple[object | None, str]:
    try:
        from torchcodec.decoders import VideoDecoder  # optional, heavy native import
    except Exception as err:  # ImportError, OSError/RuntimeError when its FFmpeg/torch libraries fail to load
        return None, f"{type(err).__name__}: {err}".splitlines()[0]
    return VideoDecoder, "ok"


def _torchcodec_decoder_class():
    return _torchcodec_probe()[0]


def torchcodec_status() -> str:
    """'ok', or why torchcodec cannot be used here (e.g. its wheel needs a CUDA build of torch)."""
    return _torchcodec_probe()[1]


def available_backends() -> list[str]:
    return (["torchcodec"] if _torchcodec_decoder_class() is not None else []) + ["pyav"]


def resolve_backend(backend: str = "auto") -> str:
    """'auto' means torchcodec when it loads, else PyAV; `LAVILA_VIDEO_BACKEND` overrides 'auto'."""
    if backend == "auto":
        backend = os.environ.get("LAVILA_VIDEO_BACKEND", "auto")
    if backend == "auto":
        return available_backends()[0]
    if backend not in ("pyav", "torchcodec"):
        raise ValueError(f"unknown video backend {backend!r} (expected 'auto', 'pyav' or 'torchcodec')")
    if backend == "torchcodec" and _torchcodec_decoder_class() is None:
        raise RuntimeError(f"video backend 'torchcodec' requested but it cannot be loaded: {torchcodec_status()}")
    return backend


def open_video(
    path: str | os.PathLike,
    backend: str = "auto",
    *,
    short_side: int | None = None,
    stream_index: int | None = None,
    threads: int = 1,
    **options,
) -> VideoReader:
    """Open one video for random frame access.

    `short_side` resizes at decode time (short side -> short_side, long side int(short_side*long/short)); this saves
    the float resize of a full-size frame when the eval transform would resize anyway, at the cost of swscale's
    bilinear instead of torch's (values differ by a few grey levels; keep it off for exact reference numbers).
    PyAV-only options: `rotate`, `tail_tolerance`, `interpolation`.
    """
    name = resolve_backend(backend)
    if name == "torchcodec":
        return TorchCodecReader(path, stream_index=stream_index, short_side=short_side, threads=threads)
    return PyAVReader(path, stream_index=stream_index, short_side=short_side, threads=threads, **options)


def decode_all(path: str | os.PathLike, stream_index: int | None = None) -> torch.Tensor:
    """Every frame of a video, sequentially (the naive path the loader benchmark compares against; small files)."""
    with PyAVReader(path, stream_index=stream_index, skip_nonref=False) as reader:
        frames = [reader._to_array(f) for f in reader._frames()]
    if not frames:
        raise VideoDecodeError(path, "no frame could be decoded", "truncated")
    return torch.from_numpy(np.stack(frames))


__all__ = [
    "FAILURE_KINDS",
    "MissingVideoError",
    "PyAVReader",
    "TorchCodecReader",
    "VideoDecodeError",
    "VideoReader",
    "available_backends",
    "decode_all",
    "open_video",
    "resolve_backend",
    "torchcodec_status",
]
