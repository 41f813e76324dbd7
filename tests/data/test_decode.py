"""Decoding: real clips (streams, fps, rotation, containers), seeking on a synthetic clip, broken files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from lavila.data import decode
from lavila.data.decode import (
    MissingVideoError,
    PyAVReader,
    VideoDecodeError,
    decode_all,
    open_video,
    resolve_backend,
)
from lavila.data.prepare import read_frame_code

EGO = "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"
MIXKIT = "mixkit-hands-of-a-baker-kneading-a-dough-42467-medium.mp4"


def codes(frames: torch.Tensor) -> list[int]:
    return [read_frame_code(f.numpy()) for f in frames]


# -------------------------------------------------------------------------------------------- real clips (media)
@pytest.mark.parametrize(
    "name, frames, hw, fps",
    [
        (EGO, 60, (288, 384), 30.0),
        ("nasa_13013.mp4", 390, (270, 480), 30000 / 1001),  # stream #3 = ffmpeg's best, not the first (#0 320x180)
        ("flipping_a_pancake.mkv", 310, (240, 426), 30.0),  # no frame count in the header: counted from packets
        ("video_90.mov", 3, (568, 320), 30.0),  # coded 568x320 with a -90 degree display matrix: portrait
        (MIXKIT.replace(".mp4", ".vp9.webm"), 50, (180, 320), 10.0),
    ],
)
def test_real_clip_metadata_and_random_access(media_dir, name, frames, hw, fps):
    reader = open_video(media_dir / name, backend="pyav")
    assert len(reader) == frames
    assert reader.fps == pytest.approx(fps, rel=1e-9)
    ids = [frames - 1, 0, frames // 2, frames // 2]
    out = reader.get_frames(ids)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (4, *hw, 3)
    full = decode_all(media_dir / name)
    assert len(full) == frames
    assert torch.equal(out, full[ids])


def test_rotation_is_applied_and_can_be_disabled(media_dir):
    rotated = open_video(media_dir / "video_90.mov", backend="pyav").get_frames([0])[0]
    raw = open_video(media_dir / "video_90.mov", backend="pyav", rotate=False).get_frames([0])[0]
    assert raw.shape == (320, 568, 3)
    # display rotation -90 (counter-clockwise) = a quarter turn clockwise of the coded picture
    assert torch.equal(rotated, torch.from_numpy(np.ascontiguousarray(np.rot90(raw.numpy(), k=-1))))


def test_vp9_and_h264_copies_decode_to_similar_pictures(media_dir):
    h264 = open_video(media_dir / MIXKIT, backend="pyav").get_frames([10, 40]).float()
    vp9 = open_video(media_dir / MIXKIT.replace(".mp4", ".vp9.webm"), backend="pyav").get_frames([10, 40]).float()
    assert (h264 - vp9).abs().mean() < 12  # same source GIF, two lossy codecs


def test_decode_time_resize_of_the_short_side(media_dir):
    reader = open_video(media_dir / EGO, backend="pyav", short_side=32)
    out = reader.get_frames([0, 59])
    assert out.shape == (2, 32, int(32 * 384 / 288), 3)  # long side int(32*384/288) = 42
    portrait = open_video(media_dir / "video_90.mov", backend="pyav", short_side=40).get_frames([1])
    assert portrait.shape == (1, int(40 * 568 / 320), 40, 3)
    full = open_video(media_dir / EGO, backend="pyav").get_frames([0]).permute(0, 3, 1, 2).float()
    ref = torch.nn.functional.interpolate(full, size=(32, 42), mode="bilinear", antialias=True)
    assert (ref.permute(0, 2, 3, 1) - out[:1].float()).abs().mean() < 8  # swscale vs torch: close, not equal


# -------------------------------------------------------------------------------------------- seeking
def test_random_access_returns_exact_frames_in_request_order(coded_video):
    reader = open_video(coded_video, backend="pyav")
    rng = np.random.default_rng(0)
    for _ in range(8):
        ids = rng.integers(0, 300, size=5).tolist()
        assert codes(reader.get_frames(ids)) == ids


def test_seeking_decodes_a_gop_not_the_whole_file(coded_video):
    reader = PyAVReader(coded_video)
    out = reader.get_frames([250, 253, 256, 259])
    assert codes(out) == [250, 253, 256, 259]
    # keyframes every 30 frames: decoding starts at 240, so about 20 frames (+ codec delay), not 260
    assert reader.frames_decoded < 60
    before = reader.frames_decoded
    reader.get_frames([262])  # same GOP, ahead: continues forward without a seek
    assert reader.frames_decoded - before < 10
    assert codes(reader.get_frames([3])) == [3]  # backwards: seeks back


# -------------------------------------------------------------------------------------------- broken files
@pytest.mark.parametrize(
    "name, kind",
    [("empty.mp4", "empty"), ("not_a_video.mp4", "unreadable"), ("no_such_file.mp4", "missing")],
)
def test_unopenable_files_raise_with_path_and_kind(media_dir, name, kind):
    with pytest.raises(VideoDecodeError) as info:
        open_video(media_dir / name, backend="pyav")
    assert info.value.kind == kind and name in str(info.value)
    assert isinstance(info.value, MissingVideoError) == (kind == "missing")


def test_truncated_file_raises_instead_of_returning_zeros(media_dir):
    reader = open_video(media_dir / "corrupt_truncated.mp4", backend="pyav")
    assert len(reader) == 50  # the header is intact and promises 50 frames
    assert reader.get_frames([5]).float().mean() > 1  # frames before the cut decode fine
    with pytest.raises(VideoDecodeError) as info:
        reader.get_frames([40])
    assert info.value.kind == "truncated" and "corrupt_truncated.mp4" in str(info.value)
    with pytest.raises(VideoDecodeError):  # and again, after the reader hit the end once
        reader.get_frames([45])


def test_tail_tolerance_clamps_a_missing_last_frame_to_the_last_decoded(media_dir):
    # With a tolerance as large as the damage, the truncated file behaves like a chunk a few frames short.
    reader = open_video(media_dir / "corrupt_truncated.mp4", backend="pyav", tail_tolerance=40)
    last = reader.get_frames([40])
    assert torch.equal(last, reader.get_frames([12]))


def test_out_of_range_ids_are_errors(coded_video):
    reader = open_video(coded_video, backend="pyav")
    with pytest.raises(VideoDecodeError, match="outside"):
        reader.get_frames([300])


def test_decode_error_survives_pickling_for_dataloader_workers():
    err = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "bad", "truncated")))
    assert (err.path, err.reason, err.kind) == ("/x.mp4", "bad", "truncated")


# -------------------------------------------------------------------------------------------- backends
def test_auto_backend_falls_back_to_pyav_without_torchcodec(coded_video, monkeypatch):
    monkeypatch.delenv("LAVILA_VIDEO_BACKEND", raising=False)
    monkeypatch.setattr(decode, "_torchcodec_decoder_class", lambda: None)
    assert resolve_backend("auto") == "pyav"
    assert isinstance(open_video(coded_video), PyAVReader)
    with pytest.raises(RuntimeError, match="torchcodec"):
        resolve_backend("torchcodec")
    with pytest.raises(ValueError, match="unknown video backend"):
        resolve_backend("decord")


def test_torchcodec_status_is_a_reason_string():
    status = decode.torchcodec_status()
    assert isinstance(status, str) and status
    assert ("torchcodec" in decode.available_backends()) == (status == "ok")


@pytest.mark.skipif("torchcodec" not in decode.available_backends(), reason=decode.torchcodec_status())
def test_torchcodec_backend_matches_pyav(coded_video):
    ids = [5, 100, 37]
    assert codes(open_video(coded_video, backend="torchcodec").get_frames(ids)) == ids
