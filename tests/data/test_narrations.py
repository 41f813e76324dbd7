"""Raw narrations -> metadata rows: the EgoClip window rule and tag handling, on hand-computed cases."""

from __future__ import annotations

import pytest

from lavila.data.metadata import MetadataError, validate_rows
from lavila.data.narrations import clean_narration, egoclip_windows, mean_gap, narrations_from_ego4d_json


def test_tags():
    assert clean_narration("#C C picks a bag of clothes") == "#C C picks a bag of clothes"  # reference: untouched
    assert clean_narration("#C C picks a bag", tags="strip") == "C picks a bag"
    assert clean_narration("  #O  a man opens the door", tags="strip") == "a man opens the door"
    assert clean_narration("#C C picks #unsure from the table", unsure="drop") is None
    assert clean_narration("#C C picks #Unsure from the table", tags="strip", unsure="remove_tag") == \
        "C picks from the table"
    with pytest.raises(ValueError, match="tags"):
        clean_narration("x", tags="lower")


def test_windows_follow_the_egoclip_rule():
    # video a: times 10, 12, 16 -> beta_a = (16 - 10) / 2 = 3; video b: 0.5, 1.5 -> beta_b = 1
    # alpha = mean(3, 1) = 2 -> half-widths 3 / 4 = 0.75 and 1 / 4 = 0.25
    narr = {"a": [(16.0, "#C C c"), (10.0, "#C C a"), (12.0, "#C C b")], "b": [(0.5, "#O x"), (1.5, "#O y")]}
    assert mean_gap([16.0, 10.0, 12.0]) == 3.0 and mean_gap([1.0]) is None
    rows = egoclip_windows(narr)
    assert rows == [("a", 9.25, 10.75, "#C C a"), ("a", 11.25, 12.75, "#C C b"), ("a", 15.25, 16.75, "#C C c"),
                    ("b", 0.25, 0.75, "#O x"), ("b", 1.25, 1.75, "#O y")]
    validate_rows(rows)
    # a given alpha (EgoVLP's 4.9 s) and a single-narration video (uses alpha: half-width 0.5, start clamped at 0)
    rows = egoclip_windows({"a": narr["a"], "c": [(0.2, "#C C z")]}, alpha=4.0)
    assert rows[0] == ("a", 10 - 3 / 8, 10 + 3 / 8, "#C C a") and rows[-1] == ("c", 0.0, 0.7, "#C C z")


def test_ego4d_json_and_bad_entries():
    data = {"v1": {"narration_pass_1": {"narrations": [{"timestamp_sec": 3.3, "narration_text": "#C C looks"}]},
                   "narration_pass_2": {"narrations": [{"timestamp_sec": 4.0, "narration_text": "#C C sits"}]}}}
    assert narrations_from_ego4d_json(data) == {"v1": [(3.3, "#C C looks")]}
    assert len(narrations_from_ego4d_json(data, passes=("narration_pass_1", "narration_pass_2"))["v1"]) == 2
    bad = {"v1": {"narration_pass_1": {"narrations": [{"timestamp_sec": 1.0}]}}}
    with pytest.raises(MetadataError, match="row 0.*narration_text"):
        narrations_from_ego4d_json(bad)
