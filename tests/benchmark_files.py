"""EK-100 annotation trees in the real formats, built at test time from the shared media clips.

Shared by the evaluation tests (``tests/eval/conftest.py``) and the pre-training tests (per-epoch EK-100 MIR), so
both read the same tiny benchmark. Clips are symlinked, never copied into the repo.
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MEDIA

BLENDER = "mixkit-chef-preparing-a-sauce-in-a-blender-43034-medium.mp4"  # 10 fps, 50 frames
KNEAD = "mixkit-hands-of-a-baker-kneading-a-dough-42467-medium.mp4"  # 10 fps, 50 frames
PASTRY = "mixkit-pastry-chef-cutting-a-loaf-into-slices-43015-medium.mp4"  # 10 fps, 40 frames
EGO = "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"  # 30 fps, 60 frames
CORRUPT = "corrupt_truncated.mp4"  # header says 50 frames, 13 decode
SHORT = "video_90.mov"  # 3 frames

EK_HEADER = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
             "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class",
             "all_nouns", "all_noun_classes"]


def link(src_name: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src = MEDIA / src_name
    if not src.exists():
        pytest.skip(f"shared media {src} not found (set LAVILA_SHARED)")
    os.symlink(src, dst)


def write_csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


def ek_row(nid, pid, vid, start, stop, narration, verb_class, noun_class):
    return [nid, pid, vid, start, start, stop, 0, 0, narration, narration.split()[0], verb_class,
            narration.split()[-1], noun_class, "[]", "[]"]


def write_ek100(tmp_path: Path) -> dict:
    """EK-100 tree: videos <PID>/<VID>.MP4, retrieval test CSV + sentences + relevancy, CLS train/validation CSVs."""
    root = tmp_path / "video_ht256px"
    link(BLENDER, root / "P01" / "P01_01.MP4")
    link(KNEAD, root / "P01" / "P01_02.MP4")
    link(PASTRY, root / "P02" / "P02_03.MP4")
    ann = tmp_path / "epic-kitchens-100-annotations"
    rows = [
        ek_row("P01_01_0", "P01", "P01_01", "00:00:00.20", "00:00:02.35", "open blender", 3, 10),
        ek_row("P01_01_1", "P01", "P01_01", "00:00:02.00", "00:00:04.90", "pour sauce", 2, 1),
        ek_row("P01_02_0", "P01", "P01_02", "00:00:00.00", "00:00:03.05", "knead dough", 10, 3),
        ek_row("P02_03_0", "P02", "P02_03", "00:00:01.10", "00:00:03.95", "cut bread", 2, 1),
        ek_row("P02_03_1", "P02", "P02_03", "00:00:00.00", "00:00:00.05", "open blender", 3, 10),  # 0.5 frame
    ]
    write_csv(ann / "retrieval_annotations" / "EPIC_100_retrieval_test.csv", EK_HEADER, rows)
    # one representative clip per distinct sentence, in this file's order
    write_csv(ann / "retrieval_annotations" / "EPIC_100_retrieval_test_sentence.csv", ["narration_id", "narration"],
              [["P01_01_0", "open blender"], ["P01_01_1", "pour sauce"], ["P01_02_0", "knead dough"],
               ["P02_03_0", "cut bread"]])
    rel = np.array([[1, 0, 0, 0], [0, 1, 0, 0.5], [0, 0, 1, 0], [0, 0.5, 0, 1], [1, 0, 0, 0]], dtype=np.float64)
    (ann / "retrieval_annotations" / "relevancy").mkdir(parents=True)
    with open(ann / "retrieval_annotations" / "relevancy" / "caption_relevancy_EPIC_100_retrieval_test.pkl",
              "wb") as f:
        pickle.dump(rel, f)
    # the train split of MIR fine-tuning: same layout (its own sentence file and relevancy pickle)
    for suffix in (".csv", "_sentence.csv"):
        (ann / "retrieval_annotations" / f"EPIC_100_retrieval_train{suffix}").write_bytes(
            (ann / "retrieval_annotations" / f"EPIC_100_retrieval_test{suffix}").read_bytes())
    with open(ann / "retrieval_annotations" / "relevancy" / "caption_relevancy_EPIC_100_retrieval_train.pkl",
              "wb") as f:
        pickle.dump(rel, f)
    write_csv(ann / "EPIC_100_train.csv", EK_HEADER, [
        ek_row("P01_01_9", "P01", "P01_01", "00:00:00.10", "00:00:01.00", "open the blender", 3, 10),
        ek_row("P01_01_8", "P01", "P01_01", "00:00:01.10", "00:00:02.00", "wash knife", 10, 20),
        ek_row("P01_02_9", "P01", "P01_02", "00:00:00.00", "00:00:02.00", "knead dough", 10, 3),
    ])
    write_csv(ann / "EPIC_100_validation.csv", EK_HEADER, [rows[0], rows[1], rows[2], rows[3]])
    return {"root": root, "ann": ann, "mir_csv": ann / "retrieval_annotations" / "EPIC_100_retrieval_test.csv",
            "mir_train_csv": ann / "retrieval_annotations" / "EPIC_100_retrieval_train.csv",
            "val_csv": ann / "EPIC_100_validation.csv", "train_csv": ann / "EPIC_100_train.csv", "relevancy": rel}
