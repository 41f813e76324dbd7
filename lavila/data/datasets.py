"""Ego4D pre-training / narrator datasets over the chunked videos (spec §2.3, §2.4, §2.9, §8.1).

Items follow the reference `VideoCaptionDatasetCLIP('ego4d')` so a trainer written against it needs no adapter:

* ``(frames, text_ids, 0.0)`` with a CLIP tokenizer (one LongTensor of ids),
* ``(frames, text_ids, attention_mask, 0.0)`` with an HF tokenizer (a tuple ``(ids, mask)``),

where `frames` is float `[3,T,crop,crop]` after a normalising transform, or uint8 `[3,T,crop,crop]` with
``uint8_frames=True`` and a transform built with ``normalize=False`` (normalise on the model's device with
:class:`lavila.models.transforms.Normalize`: 4x fewer bytes through the DataLoader). The trailing 0.0 is the
reference's "relevancy" slot (only EK-100 MIR uses it).

`--metadata-aux` mixing (`build_pretrain_dataset`): the main dataset's items become ``(1, item)``, each aux
dataset's ``(0, item)``, concatenated and shuffled together, so the batch ratio follows the dataset sizes.

Randomness (frame jitter, which rephrased/narrated text to use) comes from a numpy Generator seeded from torch's
per-worker seed, so DataLoader workers do not repeat each other's draws (the reference's numpy global RNG did).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from lavila.data.decode import open_video
from lavila.data.metadata import Row, load_metadata, validate_rows
from lavila.data.robust import DecodeFailures, ResilientDataset
from lavila.data.sampling import Decoder, chunk_path, video_loader
from lavila.data.seeding import reseed_count

Tokenizer = Callable[[str], Any]


def _per_worker_rng(seed: int) -> np.random.Generator:
    """Seeded from torch's seed, which differs per DataLoader worker and, under the trainer's per-sample seeding,
    per sample, so jitter is reproducible across resumes and ranks (the process id must not enter here)."""
    return np.random.default_rng([seed, torch.initial_seed() % 2**63])


def tokenize_one(tokenizer: Tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokenise one string; drop the batch dim a tokenizer adds for a single text. Returns (ids, mask or None)."""
    out = tokenizer(text)
    ids, mask = out if isinstance(out, tuple) else (out, None)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
        mask = mask[0] if mask is not None and mask.ndim == 2 else mask
    return ids, mask


class Ego4DClipDataset(Dataset):
    """Clips of the chunked Ego4D videos with their narration (human, rephrased or narrator-generated).

    Row shapes (see :mod:`lavila.data.metadata`): a 4-tuple's text is a str (human) or a list (rephraser: one drawn
    per access); a 5-tuple's texts are narrator samples (one drawn per access, scores ignored, as in the
    reference). `narration_selection` may also be ``'concat'`` (join with '. ') or ``'list'`` (raw list).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        metadata: str | os.PathLike | Sequence[Row],
        *,
        transform: Callable[[torch.Tensor], Any] | None = None,
        tokenizer: Tokenizer | None = None,
        clip_length: int = 4,
        is_training: bool = True,
        chunk_len: int = 300,
        fps: float = 30,
        narration_selection: str = "random",
        subsample_stride: int | None = None,
        uint8_frames: bool = False,
        decoder: Decoder | None = None,
        backend: str = "auto",
        seed: int = 0,
    ) -> None:
        if isinstance(metadata, (str, os.PathLike)):
            rows = load_metadata(metadata)
            self.metadata_name = str(metadata)
        else:
            rows = list(metadata)
            validate_rows(rows, "<metadata rows>")
            self.metadata_name = "<metadata rows>"
        if narration_selection not in ("random", "concat", "list"):
            raise ValueError(f"narration_selection must be random, concat or list, got {narration_selection!r}")
        self.samples = rows[::subsample_stride] if isinstance(subsample_stride, int) else rows
        self.root = Path(root)
        self.transform = transform
        self.tokenizer = tokenizer
        self.clip_length = clip_length
        self.is_training = is_training
        self.chunk_len = chunk_len
        self.fps = fps
        self.narration_selection = narration_selection
        self.uint8_frames = uint8_frames
        self.decoder = decoder or functools.partial(open_video, backend=backend)  # picklable for spawn workers
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def rng(self) -> np.random.Generator:
        key = (os.getpid(), torch.initial_seed(), reseed_count())
        if self._rng is None or self._rng_key != key:  # new worker / new epoch's worker seed / a reseeded sample
            self._rng, self._rng_key = _per_worker_rng(self.seed), key
        return self._rng

    def sample_path(self, i: int) -> str:
        """The chunk a sample starts in, so a failure can be attributed to a file (see ResilientDataset)."""
        uid, start = self.samples[i][0], self.samples[i][1]
        if self.chunk_len == -1:
            return str(self.root / f"{uid}.mp4")
        return chunk_path(self.root, uid, int(start) // self.chunk_len * self.chunk_len)

    def select_text(self, text: str | list[str]) -> str | list[str]:
        if isinstance(text, str):
            return text
        if self.narration_selection == "random":
            return text[int(self.rng.integers(len(text)))]
        if self.narration_selection == "concat":
            return ". ".join(text)
        return list(text)

    def get_raw_item(self, i: int) -> tuple[torch.Tensor, str | list[str]]:
        """(uint8 frames [T,H,W,3], text) before transform and tokenisation."""
        row = self.samples[i]
        uid, start, end, text = row[0], float(row[1]), float(row[2]), row[3]
        frames = video_loader(
            self.root,
            uid,
            start,
            end,
            chunk_len=self.chunk_len,
            fps=self.fps,
            clip_length=self.clip_length,
            jitter=self.is_training,
            decoder=self.decoder,
            rng=self.rng if self.is_training else None,
        )
        return frames, self.select_text(text)

    def __getitem__(self, i: int):
        frames, text = self.get_raw_item(i)
        if not self.uint8_frames:
            frames = frames.float()  # the reference transforms float 0..255 frames: exact resize numbers
        if self.transform is not None:
            frames = self.transform(frames)
        if self.tokenizer is None:
            return frames, text, 0.0
        ids, mask = tokenize_one(self.tokenizer, text)  # type: ignore[arg-type]
        if mask is not None:
            return frames, ids, mask, 0.0
        return frames, ids, 0.0


class LabeledDataset(Dataset):
    """Items become ``(label, item)``: 1 for human narrations, 0 for pseudo-labels (the SSL loss's indicator)."""

    def __init__(self, dataset: Dataset, label: int) -> None:
        self.dataset, self.label = dataset, label

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.label, self.dataset[i]


def build_pretrain_dataset(
    root: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[Row],
    metadata_aux: Sequence[str | os.PathLike | Sequence[Row]] = (),
    *,
    failures: DecodeFailures | None = None,
    max_retries: int = 20,
    **kwargs: Any,
) -> Dataset:
    """The training set of `main_pretrain.py`: one Ego4D dataset, or main+aux mixed with indicators.

    Each component is wrapped in :class:`ResilientDataset` (replacement samples come from the same component, so a
    pseudo-labelled sample never stands in for a human one). `kwargs` go to :class:`Ego4DClipDataset`.
    """
    failures = failures if failures is not None else DecodeFailures()

    def make(meta) -> Dataset:
        return ResilientDataset(Ego4DClipDataset(root, meta, **kwargs), failures, max_retries)

    main = make(metadata)
    if not metadata_aux:
        return main
    parts: list[Dataset] = [LabeledDataset(main, 1)] + [LabeledDataset(make(m), 0) for m in metadata_aux]
    return ConcatDataset(parts)


__all__ = ["Ego4DClipDataset", "LabeledDataset", "build_pretrain_dataset", "tokenize_one"]
