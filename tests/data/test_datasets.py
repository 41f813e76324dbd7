"""Ego4D datasets over synthetic chunks, aux mixing, and bad videos being replaced and counted (never zeros)."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from lavila.data.datasets import Ego4DClipDataset, LabeledDataset, build_pretrain_dataset
from lavila.data.prepare import read_frame_code
from lavila.data.robust import DecodeFailureRateExceeded, DecodeFailures, ResilientDataset
from lavila.data.sampling import get_frame_ids
from lavila.models.transforms import Normalize, eval_transform, train_transform
from tests.data.conftest import CHUNK_SECONDS

KW = dict(chunk_len=CHUNK_SECONDS, fps=30, clip_length=4)


def fake_clip_tokenizer(text):
    """Stands in for the CLIP tokenizer: [1, 8] ids (batch of one), length of the text in slot 0."""
    ids = torch.zeros(1, 8, dtype=torch.long)
    ids[0, 0] = len(text)
    return ids


def fake_hf_tokenizer(text):
    ids = fake_clip_tokenizer(text)
    return ids, torch.ones_like(ids)


def test_human_rows_give_frames_ids_and_relevancy(chunked_root):
    rows = [("vidA", 0.5, 1.5, "C opens a door")]
    ds = Ego4DClipDataset(
        chunked_root, rows, transform=eval_transform(32), tokenizer=fake_clip_tokenizer, is_training=False, **KW
    )
    frames, ids, relevancy = ds[0]
    assert frames.dtype == torch.float32 and frames.shape == (3, 4, 32, 32)
    assert ids.shape == (8,) and ids[0] == len("C opens a door") and relevancy == 0.0
    raw, text = ds.get_raw_item(0)
    assert [read_frame_code(f.numpy()) for f in raw] == get_frame_ids(15, 45, 4) and text == "C opens a door"


def test_hf_tokenizer_adds_a_mask(chunked_root):
    ds = Ego4DClipDataset(chunked_root, [("vidA", 0.5, 1.5, "x")], tokenizer=fake_hf_tokenizer, **KW)
    frames, ids, mask, relevancy = ds[0]
    assert ids.shape == mask.shape == (8,) and relevancy == 0.0


def test_rephraser_and_narrator_rows_draw_one_text_per_access(chunked_root):
    texts = ["a", "bb", "ccc"]
    rows = [("vidA", 0.5, 1.5, texts), ("vidA", 0.5, 1.5, texts, [0.1, 0.2, 0.3])]
    ds = Ego4DClipDataset(chunked_root, rows, **KW)
    drawn = {ds[i % 2][1] for i in range(30)}
    assert drawn == set(texts)
    concat = Ego4DClipDataset(chunked_root, rows, narration_selection="concat", is_training=False, **KW)
    assert concat[1][1] == "a. bb. ccc"


def test_training_jitter_differs_between_draws(chunked_root):
    ds = Ego4DClipDataset(chunked_root, [("vidA", 0.0, 1.9, "x")], is_training=True, **KW)
    draws = {tuple(read_frame_code(f.numpy()) for f in ds.get_raw_item(0)[0]) for _ in range(6)}
    assert len(draws) > 1


def test_uint8_frames_for_normalising_on_device(chunked_root):
    ds = Ego4DClipDataset(
        chunked_root,
        [("vidA", 0.5, 1.5, "x")],
        uint8_frames=True,
        is_training=False,
        transform=eval_transform(32, normalize=False),
        **KW,
    )
    frames = ds[0][0]
    assert frames.dtype == torch.uint8 and frames.shape == (3, 4, 32, 32)
    batch = torch.stack([frames, frames])
    assert Normalize((0.0, 0, 0), (1.0, 1, 1))(batch).dtype == torch.float32


def test_aux_mixing_wraps_main_as_1_and_aux_as_0(chunked_root):
    main_rows = [("vidA", 0.5, 1.5, ["m1", "m2"])]
    aux_rows = [("vidA", 1.0, 2.5, ["n1", "n2"], [1.0, 2.0]), ("vidA", 2.0, 3.0, "n3", 0.5)]
    ds = build_pretrain_dataset(chunked_root, main_rows, [aux_rows], transform=train_transform(32), **KW)
    assert len(ds) == 3
    labels = [ds[i][0] for i in range(3)]
    assert labels == [1, 0, 0]
    indicator, (frames, text, relevancy) = ds[0]
    assert frames.shape == (3, 4, 32, 32) and text in ("m1", "m2")
    only_main = build_pretrain_dataset(chunked_root, main_rows, **KW)
    assert not isinstance(only_main[0][0], int)


# -------------------------------------------------------------------------------------------- bad videos
@pytest.fixture(scope="module")
def bad_root(tmp_path_factory, chunked_root, media_dir):
    """Chunk trees with a missing, an empty, a non-video and a truncated chunk, next to good ones."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(chunked_root / "vidA.mp4", root / "good.mp4")
    for name, src in [("empty", "empty.mp4"), ("text", "not_a_video.mp4"), ("trunc", "corrupt_truncated.mp4")]:
        (root / f"{name}.mp4").mkdir()
        shutil.copy(media_dir / src, root / f"{name}.mp4" / "0.mp4")
    return root


BAD_ROWS = [
    ("missing", 0.5, 1.0, "m"),
    ("empty", 0.5, 1.0, "e"),
    ("text", 0.5, 1.0, "t"),
    ("trunc", 1.5, 1.6, "c"),  # frames 45.. of a file that decodes only 13
    ("good", 0.5, 1.0, "g"),
]


def test_bad_videos_are_replaced_by_real_samples_and_counted(bad_root):
    failures = DecodeFailures(max_failure_rate=1.0, min_samples=1)
    ds = ResilientDataset(Ego4DClipDataset(bad_root, BAD_ROWS, is_training=False, **KW), failures)
    for i in range(4):
        frames, text, _ = ds[i]
        assert text == "g"  # the next decodable sample stands in, deterministically
        assert frames.float().mean() > 0  # real frames, never zeros
    assert ds[4][1] == "g"
    counts = failures.counts()
    assert counts == {"missing": 1, "empty": 1, "unreadable": 1, "truncated": 1}, counts
    assert failures.attempts == 5 and failures.failures == 4  # one event per requested sample
    assert "4 of 5 samples failed" in failures.summary()
    assert failures.as_dict()["rate"] == pytest.approx(0.8)
    # a known-bad video is not decoded again, but a request for it still counts as a failure
    ds[0]
    assert failures.counts()["missing"] == 2 and failures.attempts == 6


def test_failure_rate_threshold_aborts_with_a_clear_message(bad_root):
    failures = DecodeFailures(max_failure_rate=0.3, min_samples=4)
    ds = ResilientDataset(Ego4DClipDataset(bad_root, BAD_ROWS, is_training=False, **KW), failures)
    with pytest.raises(DecodeFailureRateExceeded, match="max_failure_rate=30.00%") as info:
        for i in range(4):
            ds[i]
    assert "samples failed to decode" in str(info.value) and "bad" in str(info.value)


def test_all_bad_raises_instead_of_looping(bad_root):
    ds = ResilientDataset(
        Ego4DClipDataset(bad_root, BAD_ROWS[:4], is_training=False, **KW), DecodeFailures(max_failure_rate=1.0)
    )
    with pytest.raises(DecodeFailureRateExceeded, match="no decodable sample"):
        ds[0]


def test_counts_are_shared_by_dataloader_workers(bad_root):
    failures = DecodeFailures(max_failure_rate=1.0, min_samples=1)
    ds = ResilientDataset(Ego4DClipDataset(bad_root, BAD_ROWS, is_training=False, **KW), failures)
    loader = DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork")
    texts = [batch[1][0] for batch in loader]
    assert texts == ["g"] * 5
    assert (failures.failures, failures.attempts) == (4, 5)  # both workers' counts, seen from the main process


def test_labeled_dataset_passes_items_through():
    assert LabeledDataset([("x",)], 0)[0] == (0, ("x",))


class _FlakyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i % 3 == 0:
            from lavila.data.decode import VideoDecodeError

            raise VideoDecodeError(f"/videos/v{i}.mp4", "simulated", "missing")
        return i


def test_counter_works_with_spawned_workers():
    failures = DecodeFailures(max_failure_rate=1.0, min_samples=1)
    loader = DataLoader(
        ResilientDataset(_FlakyDataset(), failures), batch_size=1, num_workers=1, multiprocessing_context="spawn"
    )
    assert [int(b) for b in loader] == [1, 1, 2, 4, 4, 5]
    assert failures.as_dict() == {"attempts": 6, "failures": 2, "rate": 2 / 6, "missing": 2}
