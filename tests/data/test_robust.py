"""ResilientDataset's replacement is a pure function of (sample, seed, epoch); thresholds hold across workers."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from lavila.data.datasets import Ego4DClipDataset
from lavila.data.decode import VideoDecodeError
from lavila.data.robust import (
    DecodeFailureRateError,
    DecodeFailures,
    ResilientDataset,
    check_epoch_end,
    find_failure_counters,
)
from lavila.data.seeding import sample_seed, seeded_rngs

EGO4D_CLIP = "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"  # 2 s at 30 fps
KW = dict(chunk_len=-1, fps=-1, clip_length=4, is_training=True)  # whole videos, frame rate from the file

# corrupt_truncated.mp4: 10 fps, the header promises 50 frames, only the first 13 decode
PARTLY_CORRUPT_ROWS = [
    ("trunc", 3.0, 4.0, "late"),  # frames 30..40: fails (truncated)
    ("trunc", 0.0, 1.0, "early"),  # frames 0..10: decodes
    ("good", 0.0, 1.0, "good-a"),
    ("good", 1.0, 1.9, "good-b"),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory, media_dir):
    root = tmp_path_factory.mktemp("robust")
    shutil.copy(media_dir / EGO4D_CLIP, root / "good.mp4")
    shutil.copy(media_dir / "corrupt_truncated.mp4", root / "trunc.mp4")
    return root


def _dataset(root, rows=PARTLY_CORRUPT_ROWS, failures=None):
    return ResilientDataset(Ego4DClipDataset(root, rows, **KW), failures or DecodeFailures(max_failure_rate=1.0))


def _load(ds, index, epoch=0, seed=0):
    """As the training loop's SeededDataset loads item `index` of `epoch`."""
    with seeded_rngs(sample_seed(seed, epoch, index)):
        return ds[index]


def test_good_part_of_a_partly_corrupt_video_is_used_even_after_its_bad_part_failed(videos):
    warm = _dataset(videos)
    assert _load(warm, 0)[1] != "late"  # replaced: the late window is past the corrupt point
    frames, text, _ = _load(warm, 1)
    assert text == "early"  # not replaced because the same file failed for another sample before
    fresh_frames, fresh_text, _ = _load(_dataset(videos), 1)
    assert fresh_text == text and torch.equal(fresh_frames, frames)


def test_a_replacement_is_the_same_in_a_fresh_and_a_warm_process(videos):
    warm = _dataset(videos)
    for index in (0, 1, 2, 3, 0):
        _load(warm, index)
    for epoch in (0, 1):
        warm_frames, warm_text, _ = _load(warm, 0, epoch)
        fresh_frames, fresh_text, _ = _load(_dataset(videos), 0, epoch)
        assert warm_text == fresh_text and torch.equal(warm_frames, fresh_frames)


class _Counting(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset, self.calls = dataset, []

    def __len__(self):
        return len(self.dataset)

    def sample_path(self, i):
        return self.dataset.sample_path(i)

    def __getitem__(self, i):
        self.calls.append(i)
        return self.dataset[i]


def test_a_video_that_cannot_be_opened_is_not_tried_again_but_still_counted(videos):
    rows = [("gone", 0.0, 1.0, "x")] + PARTLY_CORRUPT_ROWS[2:]
    failures = DecodeFailures(max_failure_rate=1.0)
    inner = _Counting(Ego4DClipDataset(videos, rows, **KW))
    ds = ResilientDataset(inner, failures)
    first, second = _load(ds, 0), _load(ds, 0)
    assert first[1] == second[1] == "good-a" and torch.equal(first[0], second[0])
    assert inner.calls == [0, 1, 1]  # the missing file is looked at once
    assert failures.counts() == {"missing": 2}


class _Flaky(torch.utils.data.Dataset):
    """Index i fails (missing /videos/v{i}.mp4) when i % 4 == 0."""

    def __len__(self):
        return 8

    def sample_path(self, i):
        return f"/videos/v{i}.mp4"

    def __getitem__(self, i):
        if i % 4 == 0:
            raise VideoDecodeError(f"/videos/v{i}.mp4", "simulated", "missing")
        return i


def test_an_abort_in_a_worker_reaches_the_main_process_as_one_line():
    failures = DecodeFailures(max_failure_rate=0.1, min_samples=3)
    loader = DataLoader(ResilientDataset(_Flaky(), failures), batch_size=1, num_workers=1)
    with pytest.raises(DecodeFailureRateError) as info:
        list(loader)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("after ") and "max_failure_rate=10.00%" in message and "/videos/v0.mp4" in message


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_end_check_holds_below_min_samples_and_names_the_files(workers, capsys):
    failures = DecodeFailures(max_failure_rate=0.05)  # min_samples=100: the in-loader check never fires
    data = ResilientDataset(_Flaky(), failures)
    items = [int(x) for b in DataLoader(data, batch_size=2, num_workers=workers) for x in b]
    assert items == [1, 1, 2, 3, 5, 5, 6, 7]  # v0 and v4 replaced by the next index
    logged = []
    with pytest.raises(DecodeFailureRateError) as info:
        check_epoch_end(data, epoch=1, step=4, log_record=logged.append)
    assert str(info.value).startswith(
        "epoch 1: 25.00% of 8 samples failed to decode (more than max_failure_rate=5.00%): 2 x missing "
        "(/videos/v0.mp4, /videos/v4.mp4)")
    assert "[decode failures @ epoch 1] 2 of 8 samples failed" in capsys.readouterr().out
    (record,) = logged
    assert record["kind"] == "decode_failures" and record["missing"] == 2 and record["rate"] == 0.25
    assert [f["path"] for f in record["worst_files"]] == ["/videos/v0.mp4", "/videos/v4.mp4"]
    # the next epoch is judged on its own samples
    list(DataLoader(data, batch_size=2, num_workers=workers))
    failures.max_failure_rate = 0.3
    report = check_epoch_end(data, epoch=2, step=8)
    assert (report.attempts, report.failures) == (8, 2)


def test_counters_are_found_through_wrappers():
    from torch.utils.data import ConcatDataset

    from lavila.data.datasets import LabeledDataset

    a, b = DecodeFailures(), DecodeFailures()
    ds = ConcatDataset([LabeledDataset(ResilientDataset(_Flaky(), a), 1),
                        LabeledDataset(ResilientDataset(_Flaky(), b), 0), ResilientDataset(_Flaky(), a)])
    assert {id(c) for c in find_failure_counters(ds)} == {id(a), id(b)}
    assert check_epoch_end(_Flaky(), epoch=1, step=0) is None  # nothing to check


def _rank_main(rank: int, store: str, out: str) -> None:
    import torch.distributed as torch_dist

    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        failures = DecodeFailures(max_failure_rate=0.05)
        for i in range(4):
            if rank == 0 and i == 0:
                failures.record_failure(VideoDecodeError("/videos/r0.mp4", "simulated", "empty"), quiet=True)
            else:
                failures.record_success()
        try:
            check_epoch_end(ResilientDataset(_Flaky(), failures), epoch=1, step=2, main=False)
            result = "no error"
        except DecodeFailureRateError as err:
            result = str(err)
        with open(f"{out}.{rank}", "w") as fh:
            fh.write(result)
    finally:
        torch_dist.destroy_process_group()


def test_ranks_agree_on_the_epoch_end_decision(tmp_path):
    """Every rank sees the sum over ranks, so all of them stop (none is left waiting in a collective)."""
    import torch.multiprocessing as torch_mp

    torch_mp.start_processes(_rank_main, args=(str(tmp_path / "store"), str(tmp_path / "result")), nprocs=2,
                             start_method="fork")
    results = [(tmp_path / f"result.{r}").read_text() for r in (0, 1)]
    assert results[0] == results[1]
    assert results[0].startswith("epoch 1: 12.50% of 8 samples failed to decode") and "/videos/r0.mp4" in results[0]
