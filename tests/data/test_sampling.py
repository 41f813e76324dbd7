"""Frame sampling and the chunked Ego4D loader: reference fixture, hand-derived cases, real chunk files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lavila.conformance.sampling import check_chunked_video_loader, check_get_frame_ids
from lavila.data.decode import MissingVideoError
from lavila.data.prepare import read_frame_code
from lavila.data.sampling import (
    PAD_FRAME,
    chunk_path,
    get_frame_ids,
    read_with_padding,
    seconds_to_frame_range,
    sparse_frame_ids,
    strided_frame_ids,
    video_loader,
)
from tests.conftest import reference_file
from tests.data.conftest import CHUNK_SECONDS


@pytest.fixture(scope="module")
def metrics_fixture() -> dict:
    return json.loads(reference_file("metrics_public.json").read_text())


def codes(frames: torch.Tensor) -> list[int]:
    return [read_frame_code(f.numpy()) for f in frames]


# ------------------------------------------------------------------------------------------------ get_frame_ids
def test_get_frame_ids_matches_reference(metrics_fixture):
    checks = check_get_frame_ids("metrics_public.json", metrics_fixture["get_frame_ids"])
    assert checks and all(c.ok for c in checks), checks
    for case in metrics_fixture["get_frame_ids"]:
        assert get_frame_ids(case["start_frame"], case["end_frame"], case["num_segments"]) == case["frame_ids"]


def test_get_frame_ids_hand_derived_half_to_even():
    # seg = 29/4 = 7.25: bounds round(0, 7.25, 14.5, 21.75, 29) = 0, 7, 14 (half to even), 22, 29.
    assert get_frame_ids(0, 30, 4) == [3, 10, 18, 25]
    # seg = 2/4 = 0.5: bounds 0, round(0.5)=0, 1, round(1.5)=2, 2 -> midpoints 0, 0, 1, 2.
    assert get_frame_ids(0, 3, 4) == [0, 0, 1, 2]
    assert get_frame_ids(7, 8, 3) == [7, 7, 7]


def test_get_frame_ids_jitter_stays_in_segments_and_is_reproducible():
    bounds = [(0, 7), (7, 14), (14, 22), (22, 29)]
    a = get_frame_ids(0, 30, 4, jitter=True, rng=np.random.default_rng(3))
    b = get_frame_ids(0, 30, 4, jitter=True, rng=np.random.default_rng(3))
    assert a == b
    for i, (lo, hi) in zip(a, bounds):
        assert lo <= i <= hi
    draws = {tuple(get_frame_ids(0, 30, 4, jitter=True, rng=np.random.RandomState(s))) for s in range(20)}
    assert len(draws) > 1


# ------------------------------------------------------------------------------------------------ chunked loader
def test_chunked_loader_matches_reference_reads(metrics_fixture):
    checks = check_chunked_video_loader("metrics_public.json", metrics_fixture["chunked_video_loader"])
    assert checks and all(c.ok for c in checks), checks


def test_chunked_loader_checker_notices_a_wrong_read(metrics_fixture):
    cases = json.loads(json.dumps(metrics_fixture["chunked_video_loader"]))
    cases[0]["read"][1][1] += 1
    checks = check_chunked_video_loader("x", cases)
    assert not checks[0].ok and checks[0].max_abs_err >= 1


class FakeChunk:
    fps = 30.0

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def get_frames(self, ids):
        assert all(0 <= i < self.n for i in ids), ids
        return torch.tensor(ids, dtype=torch.int64).view(-1, 1, 1, 1).expand(-1, 1, 1, 3)


def test_loader_with_fake_chunks_crossing_and_last_chunk():
    lengths = {0: 9000, 300: 9000, 600: 1234}

    def decoder(path):
        for start, n in lengths.items():
            if path == chunk_path("r", "v", start):
                return FakeChunk(n)
        raise MissingVideoError(path)

    # 298.7 s -> frame 8961 of chunk 0; span int(2.5*30)=75 -> ids 8961..9035; those >= 9000 come from chunk 300.
    out = video_loader("r", "v", 298.7, 301.2, clip_length=4, decoder=decoder)
    assert out[:, 0, 0, 0].tolist() == [8970, 8988, 7, 26]
    # last chunk (600 s, 1234 frames) and a window past its end: re-sampled from min(1200, 1233) to 1234.
    out = video_loader("r", "v", 640.0, 650.0, clip_length=4, decoder=decoder)
    assert out[:, 0, 0, 0].tolist() == get_frame_ids(1200, 1234, 4) == [1204, 1212, 1220, 1229]


def test_loader_reads_real_chunks_across_a_boundary(chunked_root):
    # 1.9 s .. 2.3 s: frame offset round(57)=57, span max(int(0.4*30)=11 or 12, 4) crosses frame 60.
    out = video_loader(chunked_root, "vidA", 1.9, 2.3, chunk_len=CHUNK_SECONDS, fps=30, clip_length=4)
    assert out.dtype == torch.uint8 and out.shape[1:] == (64, 96, 3)
    ids = get_frame_ids(57, 57 + max(int((2.3 - 1.9) * 30), 4), 4)
    assert codes(out) == ids  # chunk 2 starts at global frame 60 and id % 60 indexes into it


def test_loader_one_frame_short_chunk_does_not_index_past_the_end(chunked_root):
    # chunk 0 of `short` has 59 frames where 60 were expected; a window at its very end must not IndexError.
    out = video_loader(chunked_root, "short", 1.95, 2.0, chunk_len=CHUNK_SECONDS, fps=30, clip_length=4)
    ids = get_frame_ids(58, 62, 4)  # round(58.5) = 58 (half to even); hand: [58, 59, 60, 60]
    assert ids == [58, 59, 60, 60]
    expected = [i if i < 59 else 1000 + (i % 59) for i in ids]
    assert codes(out) == expected


def test_loader_last_chunk_resamples_inside_the_chunk(chunked_root):
    out = video_loader(chunked_root, "lastonly", 1.9, 2.5, chunk_len=CHUNK_SECONDS, fps=30, clip_length=4)
    assert codes(out) == get_frame_ids(57, 60, 4)


def test_whole_video_mode_uses_decoder_fps(coded_video):
    out = video_loader(coded_video.parent, coded_video.stem, 1.0, 2.0, chunk_len=-1, fps=-1, clip_length=4)
    assert codes(out) == get_frame_ids(30, 60, 4)
    with pytest.raises(ValueError, match="empty"):
        video_loader(coded_video.parent, coded_video.stem, 20.0, 30.0, chunk_len=-1, fps=-1, clip_length=4)


# ------------------------------------------------------------------------------------------------ dense / sparse
def test_strided_eval_linspace_and_train_window():
    # len 100, L = 4*5 = 20: starts linspace(0, 80, 3) = 0, 40, 80.
    assert strided_frame_ids(100, 4, 5, num_clips=3) == [0, 5, 10, 15, 40, 45, 50, 55, 80, 85, 90, 95]
    ids = strided_frame_ids(100, 4, 5, jitter=True, rng=np.random.default_rng(0))
    assert len(ids) == 4 and np.all(np.diff(ids) == 5) and 0 <= ids[0] <= 80


def test_strided_short_video_pads_then_strides_and_repeats():
    # 7 frames, window 4*3=12: ids 0,3,6 then padding, repeated per clip at eval.
    assert strided_frame_ids(7, 4, 3, num_clips=2) == [0, 3, 6, PAD_FRAME] * 2
    assert strided_frame_ids(7, 4, 3, jitter=True) == [0, 3, 6, PAD_FRAME]


def test_read_with_padding_gives_black_frames_only_for_padding(coded_video):
    from lavila.data.decode import open_video

    out = read_with_padding(open_video(coded_video, backend="pyav"), [5, PAD_FRAME, 7])
    assert codes(out[[0, 2]]) == [5, 7] and out[1].sum() == 0


def test_sparse_and_seconds_to_frames():
    assert sparse_frame_ids(100, 2, num_clips=2) == get_frame_ids(0, 100, 4)
    assert seconds_to_frame_range(1.01, 2.01, 30) == (30, 61)  # round(30.3)=30, ceil(60.3)=61
