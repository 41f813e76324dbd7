"""On-disk cache of video embeddings, so re-running an evaluation (another metric, a fixed bug in scoring, a crashed
job) never decodes the videos again.

The key hashes everything that changes the numbers: the checkpoint file (absolute path, size, mtime), the model
name and frame count, the preprocessing and sampling protocol, the video root, the exact list of clip windows and
the decoder/precision. Anything not in the key cannot change the embeddings, so a stale hit is impossible short of
editing a video file in place.

Files are written atomically (tmp + fsync + rename). While a job runs, every rank periodically saves the items it
has finished to a *partial* file of the same key; a restarted job (with any number of ranks) loads all partials
first and only computes what is missing, so a crash loses at most one flush interval of work.

Entries are safetensors files (arrays) whose header holds the rest as JSON (failures, key parts): reading one can
never run code, unlike ``torch.load(weights_only=False)`` of a pickle, and a cache folder is often shared or
copied. Files of the old pickle layout (``<key>.pt``) are ignored, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lavila.atomic import atomic_target

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "LAVILA_CACHE_DIR"
SUFFIX = ".safetensors"
_HEADER_KEY = "lavila.embedding_cache"
CACHE_FORMAT = 2  # 1: torch.save pickles (.pt), never read since they can run code


def write_entry(path: str | os.PathLike, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    """Atomically write `arrays` and the JSON-able `info` as one safetensors file."""
    from safetensors.numpy import save_file

    header = {_HEADER_KEY: json.dumps({"format": CACHE_FORMAT, **info}, sort_keys=True, default=repr)}
    with atomic_target(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=header)


def read_entry(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, info)`` of a file written by :func:`write_entry`; ``ValueError`` for any other (never unpickled)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - the parser's own error types vary; all mean "not ours"
        raise ValueError(f"{path}: not an embedding cache file (safetensors): {str(err).splitlines()[0]}") from err
    try:
        info = json.loads(header[_HEADER_KEY])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: a safetensors file without the lavila embedding-cache header") from err
    if info.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: embedding cache format {info.get('format')!r}, expected {CACHE_FORMAT}")
    return arrays, info


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
    """One cache entry ``<dir>/<key>.safetensors``: ``embeds`` float32 [N, ...], header ``{failed, meta}``.

    :meth:`load` returns ``{"embeds", "failed": {index: message}, "meta"}`` or None (missing or unreadable: the
    embeddings are recomputed; an unreadable file is reported in one warning line).
    """

    def __init__(self, directory: str | os.PathLike, key: str) -> None:
        self.directory = Path(directory)
        self.key = key

    @property
    def path(self) -> Path:
        return self.directory / f"{self.key}{SUFFIX}"

    def partial_path(self, rank: int) -> Path:
        return self.directory / f"{self.key}.partial-rank{rank}{SUFFIX}"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            arrays, info = read_entry(self.path)
            if "embeds" not in arrays:
                raise ValueError(f"{self.path}: no 'embeds' array")
        except ValueError as err:  # a damaged or foreign entry is recomputed, never trusted
            log.warning("ignoring embedding cache entry: %s; recomputing", err)
            return None
        failed = {int(k): v for k, v in info.get("failed", {}).items()}
        return {"embeds": arrays["embeds"], "failed": failed, "meta": info.get("meta", {})}

    def save(self, embeds: np.ndarray, failed: dict[int, str], meta: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_entry(self.path, {"embeds": np.asarray(embeds)},
                    {"failed": {str(k): v for k, v in failed.items()}, "meta": meta})

    # -------------------------------------------------------------------------------------------------- partials
    def load_partials(self) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """Every item any rank of an earlier (interrupted) run finished: ``({index: embedding}, {index: error})``."""
        done: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        for path in sorted(self.directory.glob(f"{self.key}.partial-rank*{SUFFIX}")):
            try:
                arrays, info = read_entry(path)
            except ValueError as err:  # a partial that is not ours is ignored (its items are recomputed)
                log.warning("ignoring partial embedding cache: %s", err)
                continue
            for i, e in zip(arrays.get("index", []), arrays.get("embeds", [])):
                done[int(i)] = np.asarray(e)
            failed.update({int(k): v for k, v in info.get("failed", {}).items()})
        return done, failed

    def save_partial(self, rank: int, done: dict[int, np.ndarray], failed: dict[int, str]) -> None:
        index = sorted(done)
        embeds = np.stack([done[i] for i in index]) if index else np.zeros((0,), dtype=np.float32)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_entry(self.partial_path(rank), {"index": np.asarray(index, dtype=np.int64), "embeds": embeds},
                    {"failed": {str(k): v for k, v in failed.items()}})

    def remove_stale_temps(self) -> None:
        """Temporaries of entries whose writer was killed (a job starting on this cache calls it)."""
        from lavila.atomic import remove_stale_temps

        remove_stale_temps(self.directory, f"{self.key}*{SUFFIX}")

    def remove_partials(self) -> None:
        for path in self.directory.glob(f"{self.key}.partial-rank*{SUFFIX}"):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
