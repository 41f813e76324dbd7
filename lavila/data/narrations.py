"""Building clip metadata from raw Ego4D narrations: the EgoClip window rule and the ``#C``/``#O``/``#unsure`` tags.

The reference never does this at load time: its pickles come with the windows pre-computed and the text exactly as
tokenised (spec §2.3), and :mod:`lavila.data.metadata` keeps them byte-identical. These functions are for users who
start from Ego4D's ``narration.json`` (or another video's timestamped narrations) and need the same kind of rows.

* Window (EgoVLP/EgoClip, which LaViLa follows): for narration ``i`` of video ``v`` at time ``t_i`` the clip is
  ``[t_i - beta_v / (2 alpha), t_i + beta_v / (2 alpha)]``, with ``beta_v`` the mean gap between consecutive
  narrations of ``v`` and ``alpha`` the mean of all ``beta_v`` over the corpus (EgoVLP reports alpha ~ 4.9 s).
* Tags: raw narrations read ``#C C picks a bag`` (``#C`` camera wearer, ``#O`` another person) and may contain
  ``#unsure`` for uncertain content. ``keep`` leaves them (the reference's behaviour on its pickles); ``strip``
  removes the leading tag (``C picks a bag``, the form of the released examples); ``#unsure`` rows can be kept,
  dropped, or have the tag removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lavila.data.metadata import MetadataError

_LEADING_TAG = re.compile(r"^\s*#\s*[CcOo]\b\s*")
_UNSURE = re.compile(r"\s*#unsure\b", re.IGNORECASE)


def clean_narration(text: str, tags: str = "keep", unsure: str = "keep") -> str | None:
    """One narration with the chosen tag handling; ``None`` when ``unsure="drop"`` and the text is uncertain."""
    if tags not in ("keep", "strip"):
        raise ValueError(f"tags must be 'keep' or 'strip', got {tags!r}")
    if unsure not in ("keep", "drop", "remove_tag"):
        raise ValueError(f"unsure must be 'keep', 'drop' or 'remove_tag', got {unsure!r}")
    if _UNSURE.search(text):
        if unsure == "drop":
            return None
        if unsure == "remove_tag":
            text = _UNSURE.sub("", text)
    if tags == "strip":
        text = _LEADING_TAG.sub("", text)
    return " ".join(text.split())


def mean_gap(timestamps: Sequence[float]) -> float | None:
    """beta_v: mean gap between consecutive (sorted) narration times; None for fewer than two narrations."""
    ts = sorted(timestamps)
    if len(ts) < 2:
        return None
    return (ts[-1] - ts[0]) / (len(ts) - 1)


def egoclip_windows(narrations: Mapping[str, Sequence[tuple[float, str]]], alpha: float | None = None,
                    tags: str = "keep", unsure: str = "keep") -> list[tuple[str, float, float, str]]:
    """Metadata rows ``(video_uid, start, end, text)`` from ``{uid: [(timestamp_sec, text), ...]}``.

    ``alpha`` defaults to the corpus mean of the per-video gaps. A video with a single narration has no gap of its
    own and uses ``alpha`` (a window of one second). Starts are clamped at 0.
    """
    gaps = {uid: mean_gap([t for t, _ in items]) for uid, items in narrations.items()}
    known = [g for g in gaps.values() if g is not None]
    if alpha is None:
        if not known:
            raise ValueError("cannot estimate alpha: no video has two narrations; pass alpha (EgoVLP: ~4.9 s)")
        alpha = sum(known) / len(known)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rows = []
    for uid, items in narrations.items():
        half = (gaps[uid] if gaps[uid] is not None else alpha) / (2 * alpha)
        for t, text in sorted(items, key=lambda item: item[0]):
            cleaned = clean_narration(text, tags=tags, unsure=unsure)
            if cleaned:
                rows.append((uid, max(0.0, float(t) - half), float(t) + half, cleaned))
    return rows


def narrations_from_ego4d_json(data: Mapping[str, Any], passes: Iterable[str] = ("narration_pass_1",),
                               source: str = "narration.json") -> dict[str, list[tuple[float, str]]]:
    """``{uid: [(timestamp_sec, text)]}`` from Ego4D's ``narration.json`` (``{uid: {pass: {"narrations": [...]}}}``)."""
    out: dict[str, list[tuple[float, str]]] = {}
    for uid, video in data.items():
        if not isinstance(video, Mapping):
            raise MetadataError(source, None, None, f"video {uid!r}: expected an object, got {type(video).__name__}")
        for pass_name in passes:
            entries = (video.get(pass_name) or {}).get("narrations", [])
            for i, entry in enumerate(entries):
                try:
                    t, text = float(entry["timestamp_sec"]), str(entry["narration_text"])
                except (KeyError, TypeError, ValueError) as err:
                    raise MetadataError(source, i, f"{uid}.{pass_name}.narrations",
                                        f"needs timestamp_sec and narration_text ({err})") from None
                out.setdefault(uid, []).append((t, text))
    return out
