"""From a narrated window's candidates to the captions people read: selection, subject normalisation, merging.

Everything here is a pure function of a ``<video>.json`` document that ``lavila narrate`` wrote (every window with
all its candidates and their scores), which is why changing ``--select``, ``--subject`` or ``--merge-repeats`` on a
rerun re-renders the outputs of finished videos without running the narrator again.

* **Selection** (``--select``) picks one candidate per window:

  - ``score`` (default): the lowest score, i.e. the most confident candidate (exp mean entropy of the sampled
    tokens, what the reference's ``demo_narrator.py`` sorts by);
  - ``central``: the consensus candidate: with a dual encoder (``--dual-encoder``), each candidate's
    *agreement* is the mean cosine similarity of its text embedding to the other candidates' embeddings, and the
    candidate with the highest agreement (the medoid) wins. Sampling noise gives outliers ("C holds a
    dog" among nine "C stirs the food"); the medoid is what most samples say;
  - ``video``: the candidate whose text embedding is most similar (cosine) to the dual encoder's embedding of the
    window's frames: the caption the retrieval model finds most faithful to the video.

  Ties go to the lower score, then to the earlier candidate.
* **Subject normalisation** (``--subject``): Ego4D narrations, and so the narrator's, start with a tag (``#C``: the
  camera wearer acts, ``#O``: someone else) and name people by letters (``C`` the camera wearer, ``X``, ``Y``, ...
  others, often after a noun: ``man X``). Downstream LLMs read letters as different people from one clip to the
  next ("the subject changes between C, X and B"). ``keep`` leaves the text alone; ``strip`` removes the ``#``
  tags only; ``camera-wearer`` also writes ``C`` as "the camera wearer" and every other person letter as
  "someone" (``man X`` -> "a man", ``the woman Y`` -> "the woman"); ``someone`` writes every person, ``C``
  included, as "someone" (for third-person videos, where there is no camera wearer).
* **Merging** (``--merge-repeats``): consecutive windows with the same caption (case and spacing ignored) that
  touch or overlap become one segment spanning them (a window that failed to decode breaks a run).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

SelectMode = Literal["score", "central", "video"]
SubjectMode = Literal["keep", "strip", "camera-wearer", "someone"]
SELECT_NEEDS = {"central": "agreement", "video": "similarity"}  # the candidate field each mode ranks by

_TAG = re.compile(r"(?<!\S)#[A-Za-z]+\b:?\s*")
_NOUN_LETTER = re.compile(r"\b(?:(?P<article>a|an|the|The|A|An)\s+)?(?P<noun>man|woman|person|lady|gentleman|boy|"
                          r"girl|child|kid|guy|friend|worker|chef|baby)\s+[B-HJ-Z](?![\w'\-])")
_LETTER = re.compile(r"(?<![\w'\-])(?P<letter>[B-HJ-Z])(?P<possessive>'s)?(?![\w'\-])")


def tidy(text: str) -> str:
    """One line of text: control characters and runs of whitespace become single spaces, ends stripped (a caption
    must not break the one-line-per-caption ``.txt`` or an SRT cue)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def normalize_subject(text: str, mode: SubjectMode = "keep") -> str:
    """``text`` with its subject written the ``mode`` way (see the module docstring); whitespace is tidied
    (:func:`tidy`) in every mode but ``keep``."""
    if mode == "keep":
        return text
    if mode not in ("strip", "camera-wearer", "someone"):
        raise ValueError(f"unknown subject mode {mode!r} (keep, strip, camera-wearer, someone)")
    out = _TAG.sub("", text)
    if mode != "strip":
        out = _NOUN_LETTER.sub(lambda m: f"{m['article'] or 'a'} {m['noun']}", out)

        def person(m: re.Match) -> str:
            who = "the camera wearer" if m["letter"] == "C" and mode == "camera-wearer" else "someone"
            return who + (m["possessive"] or "")

        out = _LETTER.sub(person, out)
    return tidy(out)


def agreement(embeddings: np.ndarray) -> np.ndarray:
    """Per row of ``embeddings [R, D]``: the mean cosine similarity to the *other* rows (1.0 for a single row).

    The ``central`` selection's score: the medoid of the candidates in the dual encoder's text space.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"expected embeddings [R, D] with R >= 1, got shape {e.shape}")
    if e.shape[0] == 1:
        return np.ones(1)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(norms == 0, 1.0, norms)
    sim = e @ e.T
    return (sim.sum(axis=1) - np.diag(sim)) / (e.shape[0] - 1)


def choose(candidates: Sequence[dict[str, Any]], mode: SelectMode = "score") -> dict[str, Any] | None:
    """The selected candidate (``{"text", "score", ...}``) of one window, or None when there is none."""
    if not candidates:
        return None
    order = range(len(candidates))
    if mode == "score":
        return candidates[min(order, key=lambda i: (candidates[i]["score"], i))]
    field = SELECT_NEEDS.get(mode)
    if field is None:
        raise ValueError(f"unknown selection {mode!r} (score, central, video)")
    if any(field not in c for c in candidates):
        raise ValueError(f"--select {mode} needs each candidate's {field!r} (narrate with --dual-encoder)")
    return candidates[min(order, key=lambda i: (-candidates[i][field], candidates[i]["score"], i))]


def _key(caption: str) -> str:
    return " ".join(caption.lower().split()).rstrip(".")


def window_segments(windows: Sequence[dict[str, Any]], select: SelectMode = "score",
                    subject: SubjectMode = "keep") -> list[dict[str, Any]]:
    """One segment ``{start, end, caption, candidates, score}`` per captioned window (failed windows have none).

    ``caption`` is the selected candidate after subject normalisation (on one line, :func:`tidy`); ``candidates``
    all texts, normalised alike.
    """
    out = []
    for w in windows:
        best = choose(w.get("captions") or [], select)
        if best is None:
            continue
        out.append({"start": w["start"], "end": w["end"], "caption": tidy(normalize_subject(best["text"], subject)),
                    "candidates": [tidy(normalize_subject(c["text"], subject)) for c in w["captions"]],
                    "score": best["score"]})
    return out


def merge_repeats(segments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of consecutive segments with the same caption (ignoring case, spacing and a final period) that touch or
    overlap, as one segment from the first start to the last end.

    A merged segment keeps the first window's ``candidates``, the lowest ``score`` of the run and ``windows`` (how
    many windows it spans); a segment that merged nothing is unchanged.
    """
    out: list[dict[str, Any]] = []
    for seg in segments:
        prev = out[-1] if out else None
        if prev is not None and _key(prev["caption"]) == _key(seg["caption"]) and seg["start"] <= prev["end"] + 1e-6:
            prev["end"] = max(prev["end"], seg["end"])
            prev["score"] = min(prev["score"], seg["score"])
            prev["windows"] = prev.get("windows", 1) + 1
            continue
        out.append(dict(seg))
    return out


def segments_of(doc: dict[str, Any], select: SelectMode = "score", subject: SubjectMode = "keep",
                merge: bool = False) -> list[dict[str, Any]]:
    """The captions of one ``<video>.json`` document as segments, selected, normalised and optionally merged."""
    segs = window_segments(doc.get("windows") or [], select, subject)
    return merge_repeats(segs) if merge else segs


def format_seconds(t: float) -> str:
    """``12`` / ``12.5`` / ``12.25``: seconds as short as they are exact to the millisecond."""
    s = f"{round(float(t), 3):.3f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def to_text(segments: Sequence[dict[str, Any]]) -> str:
    """One line ``t: caption`` per segment (t = its start in seconds): the plain form LLM prompts paste in."""
    return "".join(f"{format_seconds(s['start'])}: {s['caption']}\n" for s in segments)


__all__ = ["SELECT_NEEDS", "SelectMode", "SubjectMode", "agreement", "choose", "format_seconds", "merge_repeats",
           "normalize_subject", "segments_of", "tidy", "to_text", "window_segments"]
