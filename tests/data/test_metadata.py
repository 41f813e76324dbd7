"""Metadata: the three reference row shapes, validation messages, Parquet round trip, convert-metadata CLI."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from lavila.cli import main
from lavila.data.metadata import MetadataError, load_metadata, save_metadata, validate_rows

HUMAN = [("uid-a", 3.0, 4.5, "#C C picks a bag"), ("uid-b", 10, 11.25, "C separates the yarn.")]
REPHRASED = [("uid-a", 3.0, 4.5, ["C picks a bag", "the camera wearer lifts a bag"])]
NARRATOR = [
    ("uid-a", 3.0, 4.5, ["C picks a bag.", "C holds a bag."], [0.5, 1.25]),
    ("uid-c", 0.0, 1.0, "C walks.", 2.0),  # num_return_sequences == 1: plain str and float
]


def _pickle(path, rows):
    with open(path, "wb") as f:
        pickle.dump(rows, f)
    return path


@pytest.mark.parametrize("rows", [HUMAN, REPHRASED, NARRATOR], ids=["human", "rephraser", "narrator"])
def test_pickle_rows_load_unchanged(tmp_path, rows):
    assert load_metadata(_pickle(tmp_path / "m.pkl", rows)) == rows


@pytest.mark.parametrize("rows", [HUMAN, REPHRASED, NARRATOR + HUMAN], ids=["human", "rephraser", "mixed"])
def test_parquet_round_trip_is_lossless(tmp_path, rows):
    src = _pickle(tmp_path / "m.pkl", rows)
    assert main(["convert-metadata", str(src), str(tmp_path / "m.parquet")]) == 0
    assert load_metadata(tmp_path / "m.parquet") == rows
    assert main(["convert-metadata", str(tmp_path / "m.parquet"), str(tmp_path / "back.pkl")]) == 0
    back = load_metadata(tmp_path / "back.pkl")
    assert back == rows
    assert [type(r[3]) for r in back] == [type(r[3]) for r in rows]  # str stays str, list stays list
    assert [len(r) for r in back] == [len(r) for r in rows]


def test_numpy_scalars_are_accepted_and_round_trip_by_value(tmp_path):
    rows = [("u", np.float64(1.5), np.float32(2.5), ["a", "b"], [np.float32(0.25), np.float64(3.0)])]
    src = _pickle(tmp_path / "np.pkl", rows)
    save_metadata(load_metadata(src), tmp_path / "np.parquet")
    assert load_metadata(tmp_path / "np.parquet") == [("u", 1.5, 2.5, ["a", "b"], [0.25, 3.0])]


def test_text_is_not_cleaned(tmp_path):
    rows = [("u", 0.0, 1.0, "  #C C  picks #unsure\tthing  ")]
    save_metadata(rows, tmp_path / "m.parquet")
    assert load_metadata(tmp_path / "m.parquet")[0][3] == rows[0][3]


@pytest.mark.parametrize(
    "row, field, words",
    [
        (("u", 1.0, 2.0), None, "4- or 5-tuple"),
        ((7, 1.0, 2.0, "t"), "video_uid", "non-empty str"),
        (("u", "1.0", 2.0, "t"), "start_sec", "number"),
        (("u", 1.0, float("nan"), "t"), "end_sec", "finite"),
        (("u", -1.0, 2.0, "t"), "start_sec", ">= 0"),
        (("u", 1.0, 2.0, None), "text", "str or a list"),
        (("u", 1.0, 2.0, []), "text", "empty list"),
        (("u", 1.0, 2.0, ["a", 3]), "text", "item 1"),
        (("u", 1.0, 2.0, ["a", "b"], [0.1]), "score", "list of 2"),
        (("u", 1.0, 2.0, "a", [0.1]), "score", "single text"),
    ],
)
def test_malformed_rows_name_file_row_and_field(tmp_path, row, field, words):
    path = _pickle(tmp_path / "bad.pkl", [HUMAN[0], row])
    with pytest.raises(MetadataError) as info:
        load_metadata(path)
    message = str(info.value)
    assert "bad.pkl" in message and "row 1" in message and words in message
    assert info.value.row == 1 and info.value.field == field


def test_pickles_that_would_run_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(MetadataError, match="refusing to load"):
        load_metadata(path)


def test_cli_refuses_to_overwrite_and_reports_bad_input(tmp_path, capsys):
    src = _pickle(tmp_path / "m.pkl", HUMAN)
    dst = tmp_path / "m.parquet"
    dst.write_text("old")
    assert main(["convert-metadata", str(src), str(dst)]) == 2
    assert main(["convert-metadata", str(src), str(dst), "--overwrite"]) == 0
    bad = _pickle(tmp_path / "bad.pkl", [("u", 1.0)])
    assert main(["convert-metadata", str(bad), str(tmp_path / "x.parquet")]) == 1
    assert "bad.pkl: row 0" in capsys.readouterr().err


def test_validate_rows_accepts_all_reference_shapes():
    validate_rows(HUMAN + REPHRASED + NARRATOR)


def test_val_metadata_path_replaces_train_in_the_file_name_only() -> None:
    from lavila.data.metadata import val_metadata_path

    assert val_metadata_path("/data/training/ego4d_train.pkl") == "/data/training/ego4d_val.pkl"
    assert val_metadata_path("ego4d_train.rephraser.no_punkt_top3.pkl") == "ego4d_val.rephraser.no_punkt_top3.pkl"
    assert val_metadata_path("/train_set/meta.pkl") == "/val_set/meta.pkl"  # the reference's whole-path rule
