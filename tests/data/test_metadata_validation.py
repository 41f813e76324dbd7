"""Metadata rows that would sample arbitrary frames or crash training later are refused at load time, naming the
file, the row and the field (pickle and Parquet alike)."""

from __future__ import annotations

import math
import pickle

import pytest

from lavila.data.metadata import MetadataError, load_metadata, save_metadata
from lavila.data.sampling import get_frame_ids

GOOD = ("vid", 1.0, 2.0, "#C C opens the door")


@pytest.mark.parametrize("suffix", [".pkl", ".parquet"])
@pytest.mark.parametrize(
    "row, field, words",
    [
        (("vid", 5.0, 3.0, "t"), "end_sec", "greater than start_sec"),  # end < start
        (("vid", 5.0, 5.0, "t"), "end_sec", "greater than start_sec"),  # end == start: an empty window
        (("vid", 0.0, -60.0, "t"), "end_sec", ">= 0"),  # negative end
        (("vid", 1.0, 2.0, ["a", "b"], [0.5, math.nan]), "score", "item 1 must be finite"),
        (("vid", 1.0, 2.0, ["a", "b"], [math.inf, 0.5]), "score", "item 0 must be finite"),
        (("vid", 1.0, 2.0, "a", -math.inf), "score", "finite"),
    ],
)
def test_bad_rows_are_refused_naming_file_row_and_field(tmp_path, suffix, row, field, words):
    path = tmp_path / f"bad{suffix}"
    if suffix == ".pkl":
        path.write_bytes(pickle.dumps([GOOD, GOOD, row]))
    else:
        save_metadata([GOOD, GOOD, row], path, validate=False)
    with pytest.raises(MetadataError) as info:
        load_metadata(path)
    assert str(info.value).startswith(f"{path}: row 2, field {field!r}: ")
    assert words in str(info.value)
    assert (info.value.source, info.value.row, info.value.field) == (str(path), 2, field)


def test_a_parquet_text_column_of_plain_strings_is_refused_not_split_into_characters(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"video_uid": ["vid", "vid"], "start_sec": [1.0, 3.0], "end_sec": [2.0, 4.0],
                             "text": ["#C C opens the door", "#C C closes it"]}), path)
    with pytest.raises(MetadataError) as info:
        load_metadata(path)
    assert str(info.value).startswith(f"{path}: row 0, field 'text': the column has type string")
    assert "list<string>" in str(info.value)


def test_a_file_that_is_not_parquet_is_a_metadata_error_not_arrow_invalid(tmp_path):
    path = tmp_path / "narrations.parquet"
    path.write_bytes(pickle.dumps([GOOD]))  # e.g. a pickle renamed by mistake
    with pytest.raises(MetadataError) as info:
        load_metadata(path)
    assert str(info.value).startswith(f"{path}: not a readable Parquet file: ")
    assert info.value.row is None


@pytest.mark.parametrize("start, end", [(0, -60), (10, 9), (-5, 20), (0, 0)])
def test_get_frame_ids_refuses_ranges_that_would_give_negative_ids(start, end):
    with pytest.raises(ValueError, match="get_frame_ids"):
        get_frame_ids(start, end, 4)


def test_get_frame_ids_keeps_the_reference_short_ranges():
    assert get_frame_ids(10, 11, 4) == [10, 10, 10, 10]  # fixture case: one frame, four segments
    assert get_frame_ids(5, 5, 4) == [5, 5, 4, 4]  # the reference's empty range at 5: ids stay >= 0
