"""Tiny benchmark datasets in the real annotation formats, built at test time from the shared media clips.

Clips are symlinked (never copied into the repo) into the folder layout each benchmark expects. The checkpoint is a
tiny random dual encoder saved the way our trainer saves them (``model_config`` + ``state_dict``).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests.benchmark_files import BLENDER, CORRUPT, EGO, KNEAD, PASTRY, SHORT, link, write_csv, write_ek100
from tests.conftest import REFERENCE

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, num_frames=4,
            text_width=32, text_layers=1, text_heads=2, text_vocab_size=49408, text_context_length=77, embed_dim=16)


@pytest.fixture(scope="session")
def bpe_path() -> Path:
    path = REFERENCE / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        pytest.skip(f"CLIP BPE vocabulary {path} not found (set LAVILA_SHARED)")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from lavila.models import create_model
    from lavila.models.config import config_to_dict

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
    return write_ek100(tmp_path)


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
