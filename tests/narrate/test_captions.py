"""Caption quality controls (issue 13 item 2) on hand-made inputs: selection, subject wording, merged repeats."""

from __future__ import annotations

import numpy as np
import pytest

from lavila.narrate import captions as cap


# ------------------------------------------------------------------------------------------------------- subject
@pytest.mark.parametrize(("text", "mode", "want"), [
    ("#C C stirs the food in the pan", "keep", "#C C stirs the food in the pan"),
    ("#C C stirs the food in the pan", "strip", "C stirs the food in the pan"),
    ("#C C stirs the food in the pan", "camera-wearer", "the camera wearer stirs the food in the pan"),
    ("#C C stirs the food in the pan", "someone", "someone stirs the food in the pan"),
    ("#O X hands B a knife", "strip", "X hands B a knife"),
    ("#O X hands B a knife", "camera-wearer", "someone hands someone a knife"),
    ("#O man X picks a cup from C's hand", "camera-wearer", "a man picks a cup from the camera wearer's hand"),
    ("#O man X picks a cup from C's hand", "someone", "a man picks a cup from someone's hand"),
    ("#O The woman Y talks to C", "camera-wearer", "The woman talks to the camera wearer"),
    ("#C C talks to person B", "camera-wearer", "the camera wearer talks to a person"),
    ("#unsure  C looks at the X-ray", "camera-wearer", "the camera wearer looks at the X-ray"),  # X-ray is a word
    ("A man cuts the bread", "camera-wearer", "A man cuts the bread"),  # the article A is not a person
    ("I think C is here", "someone", "I think someone is here"),  # nor is I
])
def test_subject_normalisation(text, mode, want) -> None:
    assert cap.normalize_subject(text, mode) == want


def test_subject_mode_must_be_known() -> None:
    with pytest.raises(ValueError, match="unknown subject mode"):
        cap.normalize_subject("#C C eats", "first-person")


# ----------------------------------------------------------------------------------------------------- selection
CANDS = [{"text": "#C C holds a dog", "score": 1.0, "similarity": 0.1, "agreement": 0.2},
         {"text": "#C C stirs the food", "score": 3.0, "similarity": 0.9, "agreement": 0.7},
         {"text": "#C C stirs the soup", "score": 2.0, "similarity": 0.5, "agreement": 0.8}]


def test_select_by_score_takes_the_lowest_exp_entropy() -> None:
    assert cap.choose(CANDS, "score")["text"] == "#C C holds a dog"


def test_select_central_takes_the_highest_agreement() -> None:
    assert cap.choose(CANDS, "central")["text"] == "#C C stirs the soup"


def test_select_video_takes_the_highest_text_video_similarity() -> None:
    assert cap.choose(CANDS, "video")["text"] == "#C C stirs the food"


def test_select_ties_go_to_the_lower_score_then_the_first() -> None:
    tied = [{"text": "a", "score": 2.0, "agreement": 0.5}, {"text": "b", "score": 1.0, "agreement": 0.5},
            {"text": "c", "score": 1.0, "agreement": 0.5}]
    assert cap.choose(tied, "central")["text"] == "b"
    assert cap.choose(tied, "score")["text"] == "b"
    assert cap.choose([], "score") is None


def test_select_without_similarities_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="--dual-encoder"):
        cap.choose([{"text": "a", "score": 1.0}], "video")


def test_agreement_is_the_mean_cosine_to_the_other_candidates() -> None:
    # two near-identical captions and an outlier: the pair agree, the outlier does not
    e = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # norms do not matter
    np.testing.assert_allclose(cap.agreement(e), [0.5, 0.5, 0.0])
    e = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(cap.agreement(e), [r / 2, r, r / 2])  # the middle one is the medoid
    np.testing.assert_allclose(cap.agreement(np.ones((1, 4))), [1.0])


# ------------------------------------------------------------------------------------------------------- merging
def _seg(start, end, caption, score=1.0):
    return {"start": start, "end": end, "caption": caption, "candidates": [caption], "score": score}


def test_merge_repeats_joins_consecutive_identical_captions() -> None:
    segs = [_seg(0, 1, "C stirs the food", 3.0), _seg(1, 2, "c stirs  the food.", 2.0), _seg(2, 3, "C stirs the food"),
            _seg(3, 4, "C opens the fridge"), _seg(4, 5, "C stirs the food")]
    merged = cap.merge_repeats(segs)
    assert [(s["start"], s["end"], s["caption"]) for s in merged] == [
        (0, 3, "C stirs the food"), (3, 4, "C opens the fridge"), (4, 5, "C stirs the food")]
    assert merged[0]["windows"] == 3 and merged[0]["score"] == 1.0  # the run's lowest score
    assert "windows" not in merged[1]
    assert segs[0]["end"] == 1  # the input is not modified


def test_merge_repeats_does_not_bridge_a_gap() -> None:
    # window 1-2 failed to decode: 0-1 and 2-3 are not consecutive
    merged = cap.merge_repeats([_seg(0, 1, "C eats"), _seg(2, 3, "C eats")])
    assert len(merged) == 2
    # overlapping windows (window 2 s, stride 1 s) merge
    assert [(s["start"], s["end"]) for s in cap.merge_repeats([_seg(0, 2, "C eats"), _seg(1, 3, "C eats")])] == [(0, 3)]


def test_segments_of_a_document_select_normalise_and_merge() -> None:
    doc = {"windows": [
        {"start": 0.0, "end": 1.0, "captions": [{"text": " #C C stirs the food", "score": 1.0},
                                                {"text": "#O X eats", "score": 2.0}]},
        {"start": 1.0, "end": 2.0, "error": "VideoDecodeError: ..."},
        {"start": 2.0, "end": 3.0, "captions": [{"text": "#C C stirs the food", "score": 0.5}]},
        {"start": 3.0, "end": 4.0, "captions": [{"text": "#C C stirs the food", "score": 0.7}]},
    ]}
    segs = cap.segments_of(doc, "score", "camera-wearer", merge=True)
    assert segs == [
        {"start": 0.0, "end": 1.0, "caption": "the camera wearer stirs the food",
         "candidates": ["the camera wearer stirs the food", "someone eats"], "score": 1.0},
        {"start": 2.0, "end": 4.0, "caption": "the camera wearer stirs the food",
         "candidates": ["the camera wearer stirs the food"], "score": 0.5, "windows": 2},
    ]
    assert cap.to_text(segs) == "0: the camera wearer stirs the food\n2: the camera wearer stirs the food\n"


def test_captions_are_one_line_whatever_the_narrator_emits() -> None:
    raw = " C cuts\nthe\tbread\x1c\x12 "
    doc = {"windows": [{"start": 0.0, "end": 1.0, "captions": [{"text": raw, "score": 1.0}]}]}
    (seg,) = cap.segments_of(doc, "score", "keep")
    assert seg["caption"] == "C cuts the bread" and seg["candidates"] == ["C cuts the bread"]
    assert cap.to_text([seg]) == "0: C cuts the bread\n"


def test_format_seconds() -> None:
    assert [cap.format_seconds(t) for t in (0, 0.0, 1.5, 12.25, 179.0, 2.0004)] == ["0", "0", "1.5", "12.25", "179",
                                                                                    "2"]
