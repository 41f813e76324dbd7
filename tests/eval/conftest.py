"""Tiny benchmark datasets in the real annotation formats, built at test time from the shared media clips.

Clips are symlinked (never copied into the repo) into the folder layout each benchmark expects. The checkpoint is a
tiny random dual encoder saved the way our trainer saves them (``model_config`` + ``state_dict``).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import MEDIA, REFERENCE

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, num_frames=4,
            text_width=32, text_layers=1, text_heads=2, text_vocab_size=49408, text_context_length=77, embed_dim=16)

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


@pytest.fixture(scope="session")
def bpe_path() -> Path:
    path = REFERENCE / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        pytest.skip(f"CLIP BPE vocabulary {path} not found (set LAVILA_SHARED)")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from lavila.models.registry import config_to_dict, create_model

    torch.manual_seed(0)
    model = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **TINY)
    with torch.no_grad():  # make the time attention non-trivial so frame order matters
        for b in model.visual.blocks:
            b.timeattn.qkv.weight.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_dual_encoder.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "model_config": config_to_dict(model.config), "epoch": 1}, path)
    return path


@pytest.fixture
def ek100(tmp_path) -> dict[str, Path]:
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


@pytest.fixture
def charades(tmp_path) -> dict[str, Path]:
    root = tmp_path / "CharadesEgo_v1_480"
    link(BLENDER, root / "AAAAEGO.mp4")
    link(PASTRY, root / "BBBBEGO.mp4")
    link(KNEAD, root / "CCCCEGO.mp4")
    ann = tmp_path / "CharadesEgo"
    header = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions",
              "actions", "length"]
    write_csv(ann / "CharadesEgo_v1_test_only1st.csv", header, [
        ["AAAAEGO", "S1", "Kitchen", 6, 7, "Yes", "a script, with a comma", "blender", "",
         "c001 0.00 2.10;c002 1.5 4.9", "5.0"],
        ["BBBBEGO", "S2", "Kitchen", 6, 7, "Yes", "", "", "", "c000 0.50 3.00", "4.0"],
        ["CCCCEGO", "S3", "Kitchen", 6, 7, "Yes", "", "", "", "", "5.0"],  # no action: all-zero target
    ])
    with open(ann / "Charades_v1_classes.txt", "w") as f:
        f.write("c000 Holding some clothes\nc001 Putting clothes somewhere\nc002 Taking some food, then eating\n")
    with open(ann / "metadata_filtered_train.pkl", "wb") as f:  # trimmed training clips (id, start s, end s, text)
        pickle.dump([("AAAAEGO", 0.5, 2.5, "C puts clothes away"), ("BBBBEGO", 1.0, 3.0, "C eats food"),
                     ("CCCCEGO", 0.0, 4.0, "C kneads dough")], f)
    return {"root": root, "csv": ann / "CharadesEgo_v1_test_only1st.csv", "classes": ann / "Charades_v1_classes.txt",
            "train": ann / "metadata_filtered_train.pkl"}


@pytest.fixture
def egtea(tmp_path) -> dict[str, Path]:
    root = tmp_path / "cropped_clips"
    clips = [
        ("OP01-R01-PastaSalad-1002316-1004005-F024051-F024101", 3, BLENDER),
        ("OP01-R01-PastaSalad-1004110-1007014-F024116-F024200", 1, KNEAD),
        ("P20-R03-BaconAndEggs-461239-463700-F011058-F011120", 2, SHORT),  # 3 frames: zero-padded window
        ("P20-R03-BaconAndEggs-470000-471000-F011200-F011230", 1, CORRUPT),  # cannot be decoded past frame 13
    ]
    for clip_id, _, media in clips:
        link(media, root / "-".join(clip_id.split("-")[:3]) / f"{clip_id}.mp4")
    ann = tmp_path / "EGTEA"
    ann.mkdir()
    (ann / "action_idx.txt").write_text("Open_fridge 1\nTake_bowl 2\nCut_Tomato 3\n")
    (ann / "test_split1.txt").write_text("".join(f"{c} {a} 5 7\n" for c, a, _ in clips))
    return {"root": root, "split": ann / "test_split1.txt", "actions": ann / "action_idx.txt"}


@pytest.fixture
def egomcq(tmp_path) -> dict[str, Path]:
    root = tmp_path / "video_5min_chunks_288px"
    link(EGO, root / "uid-a.mp4" / "0.mp4")
    link("flipping_a_pancake.mkv", root / "uid-b.mp4" / "0.mp4")  # 30 fps, 310 frames
    def option(uid, s, e, text):
        return {"video_uid": uid, "clip_start": s, "clip_end": e, "clip_text": text}
    questions = {
        "0": {"answer": 2, "types": 1, "query": {"clip_text": "C stirs the pan"},
              "choices": {str(k): option("uid-a" if k % 2 else "uid-b", 0.1 * k, 0.1 * k + 0.8, f"t{k}")
                          for k in range(5)}},
        "1": {"answer": 0, "types": 2, "query": {"clip_text": "C flips a pancake"},
              "choices": {str(k): option("uid-b", 1.0 * k, 1.0 * k + 1.5, f"t{k}") for k in range(5)}},
        "2": {"answer": 4, "types": 1, "query": {"clip_text": "C holds a spatula"},
              "choices": {str(k): option("uid-a", 0.3 * k, 0.3 * k + 0.5, f"t{k}") for k in range(5)}},
    }
    path = tmp_path / "egomcq.json"
    path.write_text(json.dumps(questions))
    return {"root": root, "json": path}


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    d = tmp_path / "cache"
    yield d
    shutil.rmtree(d, ignore_errors=True)
