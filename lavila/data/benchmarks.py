"""Downstream benchmarks: readers of the official annotation files and the datasets that sample their clips.

Readers parse the files exactly as the reference does (spec §2.5-2.8), because the label spaces and clip windows
they produce define the published numbers: EK-100 times are ``HH:MM:SS.ff`` strings turned into frames with the
*video's own* fps (round the start, ceil the end; the CSV frame columns are wrong for some videos), the EK-100 action
space is the set of ``"verb:noun"`` strings sorted *as strings*, Charades class names are cut at the first comma by
``csv.reader``, EGTEA labels are line order of ``action_idx.txt``, and EgoMCQ groups are named by sorted type id.

Unlike the reference, videos are not all opened up front: fps and frame counts are read when a clip is loaded, so
building a dataset is instant, and a video that cannot be decoded raises ``VideoDecodeError`` in that item only. The
datasets catch it and return an *error item* (see :func:`collate_views`) so evaluation can report, count and skip
bad clips instead of silently scoring zeros.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lavila.data.decode import VideoDecodeError, VideoReader, open_video
from lavila.data.sampling import (
    PAD_FRAME,
    get_frame_ids,
    read_with_padding,
    seconds_to_frame_range,
    strided_frame_ids,
    video_loader,
)
from lavila.errors import LavilaError

PathLike = str | os.PathLike


class AnnotationError(LavilaError):
    """A malformed annotation file; the message names the file, the row and the field.

    A :class:`~lavila.errors.LavilaError` (so also a ``ValueError``): the CLI prints it as one line.
    """


# ----------------------------------------------------------------------------------------------------------------
# EPIC-KITCHENS-100
# ----------------------------------------------------------------------------------------------------------------

EK100_COLUMNS = {
    "narration_id": 0,
    "participant_id": 1,
    "video_id": 2,
    "start_timestamp": 4,
    "stop_timestamp": 5,
    "narration": 8,
    "verb_class": 10,
    "noun_class": 12,
}
_TIMESTAMP = re.compile(r"^\s*(\d+):(\d+):(\d+(?:\.\d*)?)\s*$")


def parse_timestamp(text: str) -> float:
    """``HH:MM:SS.ff`` -> seconds (the reference's ``datetime2sec``)."""
    m = _TIMESTAMP.match(text)
    if m is None:
        raise ValueError(f"not an HH:MM:SS.ff timestamp: {text!r}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


@dataclass(frozen=True)
class EK100Row:
    narration_id: str
    participant_id: str
    video_id: str
    start_sec: float
    stop_sec: float
    narration: str
    verb_class: int
    noun_class: int

    @property
    def video_path(self) -> str:
        """Path under the EK-100 video root: ``<PID>/<VID>.MP4`` (upper-case extension, as released)."""
        return f"{self.participant_id}/{self.video_id}.MP4"

    @property
    def action(self) -> str:
        return f"{self.verb_class}:{self.noun_class}"


def _csv_rows(path: PathLike, skip_header: bool = True) -> list[tuple[int, list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    start = 1 if skip_header else 0
    return [(n + 1, row) for n, row in enumerate(rows) if n >= start and row]


def _field(path: PathLike, line: int, row: list[str], column: int, name: str, convert: Callable[[str], Any] = str):
    if column >= len(row):
        raise AnnotationError(f"{path}: row {line}: missing column {column} ({name}); the row has {len(row)} fields")
    try:
        return convert(row[column])
    except ValueError as err:
        raise AnnotationError(f"{path}: row {line}: field {name} (column {column}) = {row[column]!r}: {err}") from err


def read_ek100_csv(path: PathLike) -> list[EK100Row]:
    """Rows of ``EPIC_100_{train,validation}.csv`` or ``EPIC_100_retrieval_{train,test}.csv`` (same layout)."""
    out = []
    for line, row in _csv_rows(path):
        c = EK100_COLUMNS
        out.append(
            EK100Row(
                narration_id=_field(path, line, row, c["narration_id"], "narration_id"),
                participant_id=_field(path, line, row, c["participant_id"], "participant_id"),
                video_id=_field(path, line, row, c["video_id"], "video_id"),
                start_sec=_field(path, line, row, c["start_timestamp"], "start_timestamp", parse_timestamp),
                stop_sec=_field(path, line, row, c["stop_timestamp"], "stop_timestamp", parse_timestamp),
                narration=_field(path, line, row, c["narration"], "narration"),
                verb_class=_field(path, line, row, c["verb_class"], "verb_class", int),
                noun_class=_field(path, line, row, c["noun_class"], "noun_class", int),
            )
        )
    return out


@dataclass(frozen=True)
class ActionLabelMap:
    """The EK-100 action space: sorted ``"v:n"`` strings and, per action, its distinct narrations (zero-shot text)."""

    actions: list[str]
    narrations: list[list[str]]
    index: dict[str, int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def verbs(self) -> np.ndarray:
        """Verb class of each action id (multi-head targets, verb accuracy by marginalising action scores)."""
        return np.array([int(a.split(":")[0]) for a in self.actions], dtype=np.int64)

    @property
    def nouns(self) -> np.ndarray:
        return np.array([int(a.split(":")[1]) for a in self.actions], dtype=np.int64)


def ek100_action_label_map(*csv_paths: PathLike) -> ActionLabelMap:
    """Action label space from the train *and* validation CSVs, sorted as strings (``"10:3" < "2:1"``).

    The reference de-duplicates narrations with ``list(set(...))`` (arbitrary order); we keep first-appearance order,
    which changes nothing downstream because the class embedding is a mean over them.
    """
    narr: dict[str, list[str]] = {}
    for path in csv_paths:
        for row in read_ek100_csv(path):
            lst = narr.setdefault(row.action, [])
            if row.narration not in lst:
                lst.append(row.narration)
    actions = sorted(narr)
    return ActionLabelMap(actions, [narr[a] for a in actions], {a: i for i, a in enumerate(actions)})


def ek100_sentence_path(csv_path: PathLike) -> Path:
    """``EPIC_100_retrieval_test.csv`` -> ``EPIC_100_retrieval_test_sentence.csv`` (same folder)."""
    p = Path(csv_path)
    return p.with_name(p.name[: p.name.index(".csv")] + "_sentence.csv")


def ek100_relevancy_path(csv_path: PathLike) -> Path:
    """``relevancy/caption_relevancy_EPIC_100_retrieval_{split}.pkl`` beside the CSV; split from the CSV's name."""
    p = Path(csv_path)
    split = "train" if "train" in p.name else "test" if "test" in p.name else None
    if split is None:
        raise ValueError(f"{p}: EK-100 MIR CSV name must contain 'train' or 'test' to find its relevancy matrix")
    return p.parent / "relevancy" / f"caption_relevancy_EPIC_100_retrieval_{split}.pkl"


def read_ek100_sentences(path: PathLike) -> list[tuple[str, str]]:
    """``(narration_id of the representative clip, sentence)`` rows of a ``*_sentence.csv``."""
    return [
        (_field(path, line, row, 0, "narration_id"), _field(path, line, row, 1, "narration"))
        for line, row in _csv_rows(path)
    ]


def load_relevancy(path: PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The replica relevancy matrix ``[clips, sentences]`` (values in [0, 1]); checked against ``shape`` if given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"relevancy matrix not found: {path}")
    from lavila.data.metadata import RestrictedUnpickler

    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f).load()  # the reference's format, but nothing in it may run code
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
            raise AnnotationError(f"{path}: not a readable relevancy pickle (a NumPy matrix): {err}") from err
    rel = np.asarray(getattr(obj, "values", obj), dtype=np.float64)
    if rel.ndim != 2:
        raise AnnotationError(f"{path}: relevancy must be a 2-D matrix, got shape {rel.shape}")
    if shape is not None and rel.shape != tuple(shape):
        raise AnnotationError(
            f"{path}: relevancy shape {rel.shape} but the CSVs give {tuple(shape)} (clips, sentences)"
        )
    return rel


@dataclass(frozen=True)
class EK100MIR:
    """One EK-100 MIR split: clips, the representative sentence set and the relevancy between them."""

    rows: list[EK100Row]
    sentences: list[tuple[str, str]]
    relevancy: np.ndarray


def read_ek100_mir(
    csv_path: PathLike, sentence_csv: PathLike | None = None, relevancy: PathLike | None = None
) -> EK100MIR:
    rows = read_ek100_csv(csv_path)
    sentences = read_ek100_sentences(sentence_csv or ek100_sentence_path(csv_path))
    rel = load_relevancy(relevancy or ek100_relevancy_path(csv_path), (len(rows), len(sentences)))
    return EK100MIR(rows, sentences, rel)


# ----------------------------------------------------------------------------------------------------------------
# Charades-Ego
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CharadesRow:
    video_id: str
    actions: list[tuple[str, float, float]]  # (class code, start s, end s)
    length: float  # seconds

    @property
    def video_path(self) -> str:
        return f"{self.video_id}.mp4"


def read_charades_csv(path: PathLike) -> list[CharadesRow]:
    """``CharadesEgo_v1_{train,test}_only1st.csv``: col 0 id, col 9 ``"c092 11.90 21.20;..."``, col 10 length (s)."""
    out = []
    for line, row in _csv_rows(path):
        video_id = _field(path, line, row, 0, "id")
        actions_text = _field(path, line, row, 9, "actions")
        length = _field(path, line, row, 10, "length", float)
        actions = []
        for item in actions_text.split(";"):
            if not item:
                continue
            parts = item.split(" ")
            if len(parts) != 3:
                raise AnnotationError(f"{path}: row {line}: field actions: {item!r} is not 'cXXX start end'")
            try:
                actions.append((parts[0], float(parts[1]), float(parts[2])))
            except ValueError as err:
                raise AnnotationError(f"{path}: row {line}: field actions: {item!r}: {err}") from err
        out.append(CharadesRow(video_id, actions, length))
    return out


def read_charades_classes(path: PathLike) -> tuple[list[str], list[str]]:
    """(codes, names) of ``Charades_v1_classes.txt``: code = first 4 chars, name = chars 5.. of the first CSV field."""
    codes, names = [], []
    for line, row in _csv_rows(path, skip_header=False):
        first = row[0]
        if not re.match(r"^c\d{3}", first):
            raise AnnotationError(f"{path}: row {line}: expected 'cXXX <name>', got {first!r}")
        codes.append(first[:4])
        names.append(first[5:])
    return codes, names


# ----------------------------------------------------------------------------------------------------------------
# EGTEA Gaze+
# ----------------------------------------------------------------------------------------------------------------


def read_egtea_actions(path: PathLike) -> tuple[list[str], list[int]]:
    """(label texts, idx) of ``action_idx.txt``: name with ``_`` -> space, lower-cased; label id = line order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    names, idxs = [], []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = raw.strip()
        if not row:
            continue
        parts = row.split(" ")
        if len(parts) < 2:
            raise AnnotationError(f"{path}: row {n}: expected '<Action_Name> <idx>', got {row!r}")
        try:
            idxs.append(int(parts[-1]))
        except ValueError as err:
            raise AnnotationError(f"{path}: row {n}: field idx = {parts[-1]!r} is not an integer") from err
        names.append(" ".join(parts[:-1]).replace("_", " ").lower())
    return names, idxs


@dataclass(frozen=True)
class EgteaClip:
    clip_id: str
    action_idx: int

    @property
    def video_path(self) -> str:
        """``<first three '-'-separated fields of clip_id>/<clip_id>.mp4`` under ``cropped_clips/``."""
        return f"{'-'.join(self.clip_id.split('-')[:3])}/{self.clip_id}.mp4"


def read_egtea_split(path: PathLike) -> list[EgteaClip]:
    """``{train,test}_split1.txt`` lines ``<clip_id> <action_idx> ...``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = raw.strip().split(" ")
        if parts == [""]:
            continue
        if len(parts) < 2:
            raise AnnotationError(f"{path}: row {n}: expected '<clip_id> <action_idx> ...', got {raw!r}")
        try:
            out.append(EgteaClip(parts[0], int(parts[1])))
        except ValueError as err:
            raise AnnotationError(f"{path}: row {n}: field action_idx = {parts[1]!r} is not an integer") from err
    return out


def egtea_labels(split: Sequence[EgteaClip], idxs: Sequence[int], path: PathLike = "") -> list[int]:
    """Training label (line order of action_idx.txt) of each clip, via its ``action_idx``."""
    by_idx = {i: n for n, i in enumerate(idxs)}
    out = []
    for clip in split:
        if clip.action_idx not in by_idx:
            raise AnnotationError(f"{path}: clip {clip.clip_id}: action_idx {clip.action_idx} not in action_idx.txt")
        out.append(by_idx[clip.action_idx])
    return out


# ----------------------------------------------------------------------------------------------------------------
# EgoMCQ
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MCQOption:
    video_uid: str
    start_sec: float
    end_sec: float
    text: str


@dataclass(frozen=True)
class MCQQuestion:
    query: str
    options: list[MCQOption]
    answer: int
    type: int


def read_egomcq(path: PathLike) -> list[MCQQuestion]:
    """``egomcq.json``: items keyed ``"0".."N-1"``, read in integer order as the reference indexes them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object keyed by question index")
    out = []
    for i in range(len(data)):
        item = data.get(str(i))
        where = f"{path}: question {i}"
        if item is None:
            raise AnnotationError(f"{where}: missing (keys must be '0'..'{len(data) - 1}')")
        try:
            choices = item["choices"]
            options = [
                MCQOption(
                    str(choices[str(k)]["video_uid"]),
                    float(choices[str(k)]["clip_start"]),
                    float(choices[str(k)]["clip_end"]),
                    str(choices[str(k)].get("clip_text", "")),
                )
                for k in range(len(choices))
            ]
            q = MCQQuestion(str(item["query"]["clip_text"]), options, int(item["answer"]), int(item["types"]))
        except (KeyError, TypeError, ValueError) as err:
            raise AnnotationError(f"{where}: bad or missing field {err}") from err
        if not 0 <= q.answer < len(options):
            raise AnnotationError(f"{where}: answer {q.answer} is not one of the {len(options)} options")
        out.append(q)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Clip windows and frame sampling protocols
# ----------------------------------------------------------------------------------------------------------------

Timing = Literal["action", "duration", "whole", "frames"]


@dataclass(frozen=True)
class VideoSegment:
    """A window of one video file, in the unit its annotation uses.

    ``timing`` says how it becomes a frame range once the video's fps and length are known:
    ``action`` -> ``(round(fps*start), ceil(fps*end))`` (EK-100, Charades trimmed); ``duration`` -> ``(0, fps*end)``
    kept as a float (Charades untrimmed); ``whole`` -> ``(0, len(video))`` (EGTEA); ``frames`` -> as given.
    """

    path: str
    start: float = 0.0
    end: float | None = None
    timing: Timing = "action"

    def frame_range(self, reader: VideoReader) -> tuple[float, float]:
        if self.timing == "whole":
            return 0, len(reader)
        if self.timing == "frames":
            return self.start, float(len(reader) if self.end is None else self.end)
        end = self.end
        if end is None:
            raise ValueError(f"{self.path}: segment end is required for timing {self.timing!r}")
        if self.timing == "duration":
            return 0, reader.fps * end
        return seconds_to_frame_range(self.start, end, reader.fps)


@dataclass(frozen=True)
class ChunkedSegment:
    """A window in seconds read with :func:`lavila.data.sampling.video_loader`.

    Ego4D (EgoMCQ): absolute seconds in the 5-minute chunk layout, 30 fps assumed. ``chunk_len=-1, fps=-1``: a
    whole ``<video_uid>.mp4`` at its own fps (Charades-Ego trimmed fine-tuning clips).
    """

    video_uid: str
    start_sec: float
    end_sec: float
    chunk_len: int = 300
    fps: float = 30


@dataclass(frozen=True)
class SegmentSampling:
    """``clip_length`` segment-midpoint frames over the window (EK-100; jittered in training)."""

    clip_length: int
    num_clips: int = 1

    def frame_ids(self, start: float, end: float, num_frames: int, jitter: bool, rng=None) -> list[int]:
        return get_frame_ids(start, end, self.clip_length, jitter, rng)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SparseSampling:
    """``num_clips * clip_length`` frames spread over the whole window (Charades-Ego ``--sparse-sample``)."""

    clip_length: int
    num_clips: int = 1

    def frame_ids(self, start: float, end: float, num_frames: int, jitter: bool, rng=None) -> list[int]:
        return get_frame_ids(start, end, self.num_clips * self.clip_length, jitter, rng)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DenseSampling:
    """``num_clips`` windows of ``clip_length`` frames ``clip_stride`` apart (EGTEA; Charades without sparse)."""

    clip_length: int
    clip_stride: int
    num_clips: int = 1

    def frame_ids(self, start: float, end: float, num_frames: int, jitter: bool, rng=None) -> list[int]:
        length = int(end - start)
        clips = 1 if jitter else self.num_clips
        ids = strided_frame_ids(length, self.clip_length, self.clip_stride, clips, jitter, rng)
        return [i if i == PAD_FRAME else i + int(start) for i in ids]


Sampling = SegmentSampling | SparseSampling | DenseSampling


def read_segment_frames(
    root: PathLike,
    segment: VideoSegment | ChunkedSegment,
    sampling: Sampling,
    jitter: bool = False,
    rng=None,
    decoder: Callable[[str], VideoReader] | None = None,
) -> torch.Tensor:
    """uint8 ``[num_clips*clip_length, H, W, 3]`` of one segment, clips concatenated in time.

    Ids past the last decodable frame are clamped to it: the Charades untrimmed window ends at ``fps*length`` from
    the CSV, which can exceed the file by a few frames (the reference's decord then raised and fed zeros).
    """
    if isinstance(segment, ChunkedSegment):
        if not isinstance(sampling, SegmentSampling):
            raise ValueError("chunked Ego4D windows use segment sampling")
        return video_loader(
            root,
            segment.video_uid,
            segment.start_sec,
            segment.end_sec,
            chunk_len=segment.chunk_len,
            fps=segment.fps,
            clip_length=sampling.clip_length,
            jitter=jitter,
            decoder=decoder,
            rng=rng,
        )
    reader = (decoder or open_video)(os.path.join(root, segment.path))
    try:
        n = len(reader)
        start, end = segment.frame_range(reader)
        ids = sampling.frame_ids(start, end, n, jitter, rng)
        ids = [i if i == PAD_FRAME else min(max(int(i), 0), n - 1) for i in ids]
        return read_with_padding(reader, ids)
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------

Transform = Callable[[torch.Tensor], "torch.Tensor | list[torch.Tensor]"]


def _stack_views(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Transform output -> ``[V, 3, T, H, W]`` (a single view gets V = 1)."""
    if isinstance(out, (list, tuple)):
        return torch.stack(list(out))
    return out.unsqueeze(0)


class SegmentDataset(torch.utils.data.Dataset):
    """Views of benchmark segments, one item per segment (or per group of segments, e.g. the 5 EgoMCQ options).

    An item is a dict ``{"index", "frames": float [V,3,T,H,W] (or [G,V,3,T,H,W] for groups), **extras}``. When a
    video fails to decode the item is ``{"index", "error": message}`` instead; :func:`collate_views` separates them
    so callers can count and report failures. With ``raise_errors=True`` the ``VideoDecodeError`` propagates instead
    (for :class:`lavila.data.robust.ResilientDataset`, which replaces and counts bad training samples).

    Training jitter: with ``seed=None`` frames are drawn from numpy's global RNG, which the training loop's
    ``SeededDataset`` seeds from ``(seed, epoch, index)`` for every item; with an explicit ``seed`` the dataset draws
    from its own ``(seed, epoch, index)`` generator (``set_epoch``). Either way the draw does not depend on the
    DataLoader worker (the reference's unseeded numpy RNG repeated jitter across workers).
    """

    def __init__(
        self,
        root: PathLike,
        segments: Sequence[VideoSegment | ChunkedSegment | Sequence[VideoSegment | ChunkedSegment]],
        sampling: Sampling,
        transform: Transform,
        jitter: bool = False,
        extras: Callable[[int], dict[str, Any]] | None = None,
        seed: int | None = None,
        decoder: Callable[[str], VideoReader] | None = None,
        raise_errors: bool = False,
    ) -> None:
        self.root = root
        self.segments = list(segments)
        self.sampling = sampling
        self.transform = transform
        self.jitter = jitter
        self.extras = extras
        self.seed = seed
        self.decoder = decoder
        self.raise_errors = raise_errors
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.segments)

    def sample_path(self, index: int) -> str | None:
        """Video file of an item (lets ResilientDataset skip rows of a video already known to be bad)."""
        seg = self.segments[index]
        if isinstance(seg, VideoSegment):
            return os.path.join(self.root, seg.path)
        if isinstance(seg, ChunkedSegment) and seg.chunk_len == -1:
            return os.path.join(self.root, f"{seg.video_uid}.mp4")
        return None

    def _rng(self, index: int) -> np.random.Generator | None:
        if not self.jitter or self.seed is None:
            return None
        return np.random.default_rng([self.seed, self._epoch, index])

    def _views(self, segment, rng) -> torch.Tensor:
        frames = read_segment_frames(self.root, segment, self.sampling, self.jitter, rng, self.decoder)
        return _stack_views(self.transform(frames))

    def __getitem__(self, index: int) -> dict[str, Any]:
        segment = self.segments[index]
        rng = self._rng(index)
        item: dict[str, Any] = {"index": index}
        try:
            if isinstance(segment, (VideoSegment, ChunkedSegment)):
                item["frames"] = self._views(segment, rng)
            else:
                item["frames"] = torch.stack([self._views(s, rng) for s in segment])
        except VideoDecodeError as err:
            if self.raise_errors:
                raise
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        except ValueError as err:  # e.g. an empty or out-of-video window
            if self.raise_errors:
                raise VideoDecodeError(self.sample_path(index) or str(segment), str(err), "out_of_range") from err
            return {"index": index, "error": f"{type(err).__name__}: {err}"}
        if self.extras is not None:
            item.update(self.extras(index))
        return item


def collate_views(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items, list the failed ones as ``failed = [(index, message), ...]``.

    Tensors and numbers in extras are stacked/tensorised; other extras (strings) stay lists.
    """
    good = [b for b in batch if "error" not in b]
    out: dict[str, Any] = {"failed": [(b["index"], b["error"]) for b in batch if "error" in b]}
    out["index"] = torch.tensor([b["index"] for b in good], dtype=torch.long)
    keys = [k for k in (good[0] if good else {}) if k != "index"]
    for k in keys:
        values = [b[k] for b in good]
        if isinstance(values[0], torch.Tensor):
            out[k] = torch.stack(values)
        elif isinstance(values[0], np.ndarray):
            out[k] = torch.from_numpy(np.stack(values))
        elif isinstance(values[0], (int, float, bool, np.number)):
            out[k] = torch.tensor(values)
        else:
            out[k] = values
    return out


# ----------------------------------------------------------------------------------------------------------------
# Benchmark definitions: segments + targets + class texts, as zero-shot evaluation and fine-tuning consume them
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ClassificationSet:
    """Segments with targets (int class ids, or multi-hot rows for multi-label Charades) and the class texts."""

    segments: list[VideoSegment]
    targets: np.ndarray  # [N] int64 or [N, K] float (multi-label)
    class_texts: list[list[str]]  # per class, the texts whose embeddings are averaged
    class_names: list[str]
    multilabel: bool = False
    label_map: ActionLabelMap | None = None


def ek100_cls_set(val_csv: PathLike, label_map: ActionLabelMap) -> ClassificationSet:
    rows = read_ek100_csv(val_csv)
    missing = sorted({r.action for r in rows} - set(label_map.index))
    if missing:
        raise AnnotationError(f"{val_csv}: actions {missing[:5]} are not in the label map (build it from train+val)")
    segments = [VideoSegment(r.video_path, r.start_sec, r.stop_sec, "action") for r in rows]
    targets = np.array([label_map.index[r.action] for r in rows], dtype=np.int64)
    return ClassificationSet(segments, targets, label_map.narrations, label_map.actions, label_map=label_map)


def charades_set(csv_path: PathLike, classes_path: PathLike, trimmed: bool = False) -> ClassificationSet:
    """Untrimmed (one multi-hot sample per video, the evaluation protocol) or trimmed (one per action)."""
    codes, names = read_charades_classes(classes_path)
    index = {c: i for i, c in enumerate(codes)}
    rows = read_charades_csv(csv_path)
    segments, targets = [], []
    for row in rows:
        for code, _, _ in row.actions:
            if code not in index:
                raise AnnotationError(f"{csv_path}: video {row.video_id}: class {code} not in {classes_path}")
        if trimmed:
            for code, s, e in row.actions:
                segments.append(VideoSegment(row.video_path, s, e, "action"))
                targets.append(index[code])
        else:
            segments.append(VideoSegment(row.video_path, 0.0, row.length, "duration"))
            hot = np.zeros(len(codes), dtype=np.float32)
            for code, _, _ in row.actions:
                hot[index[code]] = 1.0
            targets.append(hot)
    arr = np.array(targets, dtype=np.int64) if trimmed else np.stack(targets) if targets else np.zeros((0, len(codes)))
    return ClassificationSet(segments, arr, [[n] for n in names], names, multilabel=not trimmed)


def egtea_set(split_path: PathLike, actions_path: PathLike) -> ClassificationSet:
    names, idxs = read_egtea_actions(actions_path)
    clips = read_egtea_split(split_path)
    labels = egtea_labels(clips, idxs, split_path)
    segments = [VideoSegment(c.video_path, timing="whole") for c in clips]
    return ClassificationSet(segments, np.array(labels, dtype=np.int64), [[n] for n in names], names)


def mcq_segments(questions: Sequence[MCQQuestion]) -> list[list[ChunkedSegment]]:
    return [[ChunkedSegment(o.video_uid, o.start_sec, o.end_sec) for o in q.options] for q in questions]


__all__ = [
    "ActionLabelMap",
    "AnnotationError",
    "CharadesRow",
    "ChunkedSegment",
    "ClassificationSet",
    "DenseSampling",
    "EK100MIR",
    "EK100Row",
    "EgteaClip",
    "MCQOption",
    "MCQQuestion",
    "SegmentDataset",
    "SegmentSampling",
    "SparseSampling",
    "VideoSegment",
    "charades_set",
    "collate_views",
    "egtea_set",
    "ek100_action_label_map",
    "ek100_cls_set",
    "ek100_relevancy_path",
    "ek100_sentence_path",
    "load_relevancy",
    "mcq_segments",
    "parse_timestamp",
    "read_charades_classes",
    "read_charades_csv",
    "read_egomcq",
    "read_egtea_actions",
    "read_egtea_split",
    "read_ek100_csv",
    "read_ek100_mir",
    "read_ek100_sentences",
    "read_segment_frames",
]
