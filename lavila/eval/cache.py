"""On-disk cache of video embeddings, so re-running an evaluation (another metric, a fixed bug in scoring, a crashed
job) never decodes the videos again.

The key hashes everything that changes the numbers: the checkpoint file (absolute path, size, mtime), the model
name and frame count, the preprocessing and sampling protocol, the video root, the exact list of clip windows and
the decoder/precision. Anything not in the key cannot change the embeddings, so a stale hit is impossible short of
editing a video file in place.

Files are written atomically (tmp + fsync + rename). While a job runs, every rank periodically saves the items it
has finished to a *partial* file of the same key; a restarted job (with any number of ranks) loads all partials
first and only computes what is missing, so a crash loses at most one flush interval of work.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lavila.atomic import atomic_save

ENV_CACHE_DIR = "LAVILA_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$LAVILA_CACHE_DIR`` or ``~/.cache/lavila/embeddings``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lavila" / "embeddings"


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Identity of a (large) file without reading it: absolute path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable object (keys sorted, non-JSON values via ``repr``)."""
    text = json.dumps(obj, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def items_digest(items: Iterable[Any]) -> str:
    """sha256 of a list of clip descriptions (dataclasses are hashed through their repr)."""
    h = hashlib.sha256()
    for item in items:
        h.update(repr(item).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


class EmbeddingCache:
    """One cache entry ``<dir>/<key>.pt`` = ``{"embeds": float32 [N, ...], "failed": {index: message}, "meta": {}}``."""

    def __init__(self, directory: str | os.PathLike, key: str) -> None:
        self.directory = Path(directory)
        self.key = key

    @property
    def path(self) -> Path:
        return self.directory / f"{self.key}.pt"

    def partial_path(self, rank: int) -> Path:
        return self.directory / f"{self.key}.partial-rank{rank}.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            return None
        if not isinstance(data, dict) or "embeds" not in data:
            return None
        return data

    def save(self, embeds: np.ndarray, failed: dict[int, str], meta: dict[str, Any]) -> None:
        atomic_save({"embeds": embeds, "failed": dict(failed), "meta": meta}, self.path)

    # -------------------------------------------------------------------------------------------------- partials
    def load_partials(self) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """Every item any rank of an earlier (interrupted) run finished: ``({index: embedding}, {index: error})``."""
        done: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        for path in sorted(self.directory.glob(f"{self.key}.partial-rank*.pt")):
            try:
                part = torch.load(path, map_location="cpu", weights_only=False)
            except Exception:  # noqa: BLE001 - a partial damaged by a crash is ignored (recomputed)
                continue
            for i, e in zip(part.get("index", []), part.get("embeds", [])):
                done[int(i)] = np.asarray(e)
            failed.update({int(k): v for k, v in part.get("failed", {}).items()})
        return done, failed

    def save_partial(self, rank: int, done: dict[int, np.ndarray], failed: dict[int, str]) -> None:
        index = sorted(done)
        embeds = np.stack([done[i] for i in index]) if index else np.zeros((0,), dtype=np.float32)
        atomic_save({"index": index, "embeds": embeds, "failed": dict(failed)}, self.partial_path(rank))

    def remove_partials(self) -> None:
        for path in self.directory.glob(f"{self.key}.partial-rank*.pt"):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
