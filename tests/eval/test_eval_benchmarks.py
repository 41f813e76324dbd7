"""Benchmark readers (real file formats) and the frames each protocol samples (hand-derived ids)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lavila.data import benchmarks as B
from lavila.data.decode import open_video
from lavila.data.sampling import PAD_FRAME


class LoggingDecoder:
    """Opens real videos but records which frame ids each read asks for."""

    def __init__(self):
        self.reads: list[tuple[str, list[int]]] = []

    def __call__(self, path):
        reader = open_video(path)
        log = self.reads

        class Logged:
            fps = reader.fps

            def __len__(self):
                return len(reader)

            def get_frames(self, ids):
                log.append((str(path).rsplit("/", 1)[-1], list(ids)))
                return reader.get_frames(ids)

            def close(self):
                reader.close()

        return Logged()


def test_parse_timestamp():
    assert B.parse_timestamp("00:00:02.35") == pytest.approx(2.35)
    assert B.parse_timestamp("01:02:03.5") == pytest.approx(3723.5)
    with pytest.raises(ValueError, match="HH:MM:SS"):
        B.parse_timestamp("2.35")


def test_ek100_csv_and_label_map(ek100):
    rows = B.read_ek100_csv(ek100["mir_csv"])
    assert [r.narration_id for r in rows][:2] == ["P01_01_0", "P01_01_1"]
    assert rows[0].video_path == "P01/P01_01.MP4" and rows[0].start_sec == pytest.approx(0.2)
    assert rows[3].action == "2:1" and rows[0].action == "3:10"
    lm = B.ek100_action_label_map(ek100["train_csv"], ek100["val_csv"])
    # sorted as strings: "10:20" < "10:3" (char '2' < '3') < "2:1" < "3:10"
    assert lm.actions == ["10:20", "10:3", "2:1", "3:10"]
    # train is read first: its narration comes first; duplicates ("knead dough" twice) kept once
    assert lm.narrations[3] == ["open the blender", "open blender"]
    assert lm.narrations[1] == ["knead dough"]
    np.testing.assert_array_equal(lm.verbs, [10, 10, 2, 3])
    np.testing.assert_array_equal(lm.nouns, [20, 3, 1, 10])
    cls = B.ek100_cls_set(ek100["val_csv"], lm)
    np.testing.assert_array_equal(cls.targets, [3, 2, 1, 2])


def test_ek100_mir_files(ek100):
    mir = B.read_ek100_mir(ek100["mir_csv"])
    assert len(mir.rows) == 5 and [s for s, _ in mir.sentences] == ["P01_01_0", "P01_01_1", "P01_02_0", "P02_03_0"]
    np.testing.assert_array_equal(mir.relevancy, ek100["relevancy"])
    assert B.ek100_relevancy_path(ek100["mir_csv"]).name == "caption_relevancy_EPIC_100_retrieval_test.pkl"
    with pytest.raises(B.AnnotationError, match=r"shape \(5, 4\) but the CSVs give \(5, 3\)"):
        B.load_relevancy(B.ek100_relevancy_path(ek100["mir_csv"]), (5, 3))


def test_bad_csv_row_names_file_row_and_field(tmp_path):
    from tests.benchmark_files import EK_HEADER, write_csv

    path = tmp_path / "EPIC_100_validation.csv"
    write_csv(path, EK_HEADER, [["id", "P01", "P01_01", "x", "00:00:01.00", "00:00:02.00", 0, 0, "open tap", "open",
                                 "three", "tap", 5, "", ""]])
    with pytest.raises(B.AnnotationError, match=r"EPIC_100_validation.csv: row 2: field verb_class \(column 10\)"):
        B.read_ek100_csv(path)


def test_charades_readers(charades):
    rows = B.read_charades_csv(charades["csv"])
    assert rows[0].actions == [("c001", 0.0, 2.1), ("c002", 1.5, 4.9)] and rows[0].length == 5.0
    assert rows[2].actions == []
    codes, names = B.read_charades_classes(charades["classes"])
    # csv.reader cuts the name at its first comma, as in the reference
    assert codes == ["c000", "c001", "c002"] and names[2] == "Taking some food"
    s = B.charades_set(charades["csv"], charades["classes"])
    np.testing.assert_array_equal(s.targets, [[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert s.segments[0] == B.VideoSegment("AAAAEGO.mp4", 0.0, 5.0, "duration") and s.multilabel
    trimmed = B.charades_set(charades["csv"], charades["classes"], trimmed=True)
    assert len(trimmed.segments) == 3 and list(trimmed.targets) == [1, 2, 0]


def test_egtea_readers(egtea):
    names, idxs = B.read_egtea_actions(egtea["actions"])
    assert names == ["open fridge", "take bowl", "cut tomato"] and idxs == [1, 2, 3]
    s = B.egtea_set(egtea["split"], egtea["actions"])
    assert list(s.targets) == [2, 0, 1, 0]  # action_idx 3,1,2,1 -> line order
    assert s.segments[0].path == ("OP01-R01-PastaSalad/"
                                  "OP01-R01-PastaSalad-1002316-1004005-F024051-F024101.mp4")
    bad = egtea["split"].parent / "bad_split.txt"
    bad.write_text("OP01-R01-PastaSalad-1-2-F1-F2 9\n")
    with pytest.raises(B.AnnotationError, match="action_idx 9 not in action_idx.txt"):
        B.egtea_set(bad, egtea["actions"])


def test_egomcq_reader(egomcq, tmp_path):
    qs = B.read_egomcq(egomcq["json"])
    assert [q.answer for q in qs] == [2, 0, 4] and [q.type for q in qs] == [1, 2, 1]
    assert qs[0].options[1] == B.MCQOption("uid-a", 0.1, pytest.approx(0.9), "t1")
    data = json.loads(egomcq["json"].read_text())
    del data["1"]["answer"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(B.AnnotationError, match="question 1: bad or missing field 'answer'"):
        B.read_egomcq(bad)


def test_segment_sampling_ek100_frame_ids(ek100):
    log = LoggingDecoder()
    rows = B.read_ek100_csv(ek100["mir_csv"])
    segs = [B.VideoSegment(r.video_path, r.start_sec, r.stop_sec, "action") for r in rows]
    for s in segs:
        B.read_segment_frames(ek100["root"], s, B.SegmentSampling(4), decoder=log)
    # 10 fps videos. Row 0: 0.20-2.35 s -> frames [round(2), ceil(23.5)) = [2, 24); seg = 21/4 = 5.25, bounds
    # 2, 7, 12 (10.5 rounds to even 10), 18, 23 -> midpoints 4, 9, 15, 20.
    # Row 1: [20, 49): seg 7 -> 20,27,34,41,48 -> 23,30,37,44. Row 2: [0, ceil(30.5)=31): seg 7.5 -> 0, 8 (7.5 -> 8),
    # 15, 22 (22.5 -> 22), 30 -> 4,11,18,26. Row 3: [11, 40): seg 7 -> 14,21,28,35. Row 4: [0, 1) -> 0,0,0,0.
    assert [ids for _, ids in log.reads] == [[4, 9, 15, 20], [23, 30, 37, 44], [4, 11, 18, 26], [14, 21, 28, 35],
                                             [0, 0, 0, 0]]


def test_sparse_and_dense_sampling_frame_ids(charades, egtea):
    log = LoggingDecoder()
    # Charades untrimmed, sparse 16 over [0, fps*length) = [0, 50.0): seg 49/16 = 3.0625, bounds round(3.0625 i)
    # = 0,3,6,9,12,15,18,21,24 (24.5 -> 24),28,31,34,37,40,43,46,49 -> midpoints below
    B.read_segment_frames(charades["root"], B.VideoSegment("AAAAEGO.mp4", 0.0, 5.0, "duration"),
                          B.SparseSampling(16), decoder=log)
    assert log.reads[-1][1] == [1, 4, 7, 10, 13, 16, 19, 22, 26, 29, 32, 35, 38, 41, 44, 47]
    # EGTEA dense, 16 x stride 2 = 32-frame window, 10 clips over 50 frames: starts linspace(0, 18, 10) -> 0,2,..,18
    s = B.egtea_set(egtea["split"], egtea["actions"])
    frames = B.read_segment_frames(egtea["root"], s.segments[0], B.DenseSampling(16, 2, 10), decoder=log)
    expected = [st + 2 * k for st in range(0, 19, 2) for k in range(16)]
    assert log.reads[-1][1] == expected and frames.shape[0] == 160
    # a 3-frame clip: frames 0 and 2, then 14 zero frames, the clip repeated for each of the 10 clips
    frames = B.read_segment_frames(egtea["root"], s.segments[2], B.DenseSampling(16, 2, 10), decoder=log)
    assert frames.shape[0] == 160 and log.reads[-1][1] == [0, 2] * 10
    assert frames[2:16].abs().sum() == 0 and frames[0].float().sum() > 0
    assert B.DenseSampling(16, 2, 10).frame_ids(0, 3, 3, False)[:3] == [0, 2, PAD_FRAME]


def test_dataset_reports_corrupt_video_and_collate_separates_it(egtea):
    from lavila.models.transforms import eval_transform

    s = B.egtea_set(egtea["split"], egtea["actions"])
    ds = B.SegmentDataset(egtea["root"], s.segments, B.DenseSampling(4, 2, 2), eval_transform(32, num_clips=2,
                          num_crops=3, clip_length=4))
    batch = B.collate_views([ds[0], ds[3]])
    assert batch["frames"].shape == (1, 6, 3, 4, 32, 32)  # 2 clips x 3 crops
    assert batch["index"].tolist() == [0]
    (index, message), = batch["failed"]
    assert index == 3 and "VideoDecodeError" in message and "truncated" in message


def test_training_jitter_is_reproducible_per_epoch_and_index(ek100):
    from lavila.models.transforms import eval_transform

    rows = B.read_ek100_csv(ek100["mir_csv"])
    segs = [B.VideoSegment(r.video_path, r.start_sec, r.stop_sec, "action") for r in rows]
    ds = B.SegmentDataset(ek100["root"], segs, B.SegmentSampling(4), eval_transform(32), jitter=True, seed=3)
    a, b = ds[1]["frames"], ds[1]["frames"]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1]["frames"])  # new epoch, new draw (8^4 possibilities)
