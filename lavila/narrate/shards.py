"""Resumable, sharded, atomic outputs for long per-item jobs (narration, rephrasing).

A job has ``total`` items, identified by their index in the input. Rank ``r`` of ``W`` processes indices
``r, r+W, r+2W, ...`` (the reference's ``DistributedSampler(shuffle=False)`` order, without its padding repeats).
Results are written as many small *part files*, each holding an explicit list of indices, so:

* a part is written atomically (temporary file, fsync, ``os.replace``, fsync of the folder): an interrupted job
  leaves whole parts only, never a truncated one;
* resuming scans the parts and skips every index that already *succeeded*, whatever world size wrote it; a
  recorded failure can be pending again (``pending(retry_failed=True)``, narrate's choice), so a rerun retries
  exactly the failed items;
* merging checks that every index ``0..total-1`` was attempted (a success or a recorded failure) and succeeded at
  most once before it writes anything, so a merged file is never silently incomplete or duplicated; a success
  supersedes the earlier failures of its index (a retry that worked).

No process group is needed: ranks never talk to each other. Whichever rank finishes last finds the job complete
and merges (merging is idempotent and atomic, so a race between two ranks is harmless).

Parts are JSON (``{"indices", "results", "failures"}``), readable by hand and safe to load. ``job.json`` records the
job's fingerprint (input, checkpoint, decoding settings); reusing an output folder for a different job is refused.
Keys a job no longer fingerprints (``ignored_keys``, e.g. narrate's old ``video_root``) are ignored in an existing
``job.json``, so an upgrade does not turn a running job into a "different" one.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lavila.atomic import atomic_write_text, remove_stale_temps
from lavila.errors import LavilaError
from lavila.failpoints import failpoint

log = logging.getLogger(__name__)

PARTS_DIR = "parts"
JOB_FILE = "job.json"


class ShardError(LavilaError, RuntimeError):
    """An output folder that cannot be resumed or merged; the message says why and what to do (a user-fixable
    problem: the CLI prints it as one line; still a ``RuntimeError`` for callers that catch that)."""


def assigned_indices(total: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Indices rank ``rank`` of ``world_size`` owns: ``rank, rank + W, ...``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(range(rank, total, world_size))


class ShardedOutput:
    """The part files of one job under ``out_dir`` (see module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, total: int, fingerprint: dict[str, Any] | None = None,
                 ignored_keys: Sequence[str] = (), output_option: str = "--output-dir") -> None:
        self.out_dir = Path(out_dir)
        self.output_option = output_option  # the flag that names this output, for the messages
        self.parts_dir = self.out_dir / PARTS_DIR
        self.total = int(total)
        self.fingerprint = dict(fingerprint or {})
        self.ignored_keys = frozenset(ignored_keys)

    # ----------------------------------------------------------------------------------------------- job identity
    def open(self, overwrite: bool = False) -> None:
        """Create the folders and ``job.json``, or check that an existing job is the same job."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        # Temporaries of parts and merged files whose writer was killed (only dead writers': ranks start unsynced).
        remove_stale_temps(self.parts_dir, "part-*.json")
        remove_stale_temps(self.out_dir, ("*.json", "*.pkl", "*.parquet"))  # job.json, merged outputs, failures
        job_path = self.out_dir / JOB_FILE
        want = {"total": self.total, "fingerprint": self.fingerprint}
        if job_path.exists():
            try:
                have = json.loads(job_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ShardError(f"{job_path} is unreadable ({err}); delete it to start over") from err
            if isinstance(have, dict) and isinstance(have.get("fingerprint"), dict):
                have["fingerprint"] = {k: v for k, v in have["fingerprint"].items() if k not in self.ignored_keys}
            if have != want and not overwrite:
                diff = sorted(k for k in set(have.get("fingerprint", {})) | set(self.fingerprint)
                              if have.get("fingerprint", {}).get(k) != self.fingerprint.get(k))
                if have.get("total") != self.total:
                    diff.insert(0, "total")
                raise ShardError(
                    f"{self.out_dir} holds results of a different job (differs in: {', '.join(diff)}). "
                    f"Use another {self.output_option}, or --overwrite to discard the old parts."
                )
            if have != want and overwrite:
                self.clear()
        atomic_write_text(job_path, json.dumps(want, indent=1, sort_keys=True))
        failpoint("shards.job_written", JOB_FILE)

    def clear(self) -> None:
        for part in self.part_files():
            part.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------------ parts
    def part_files(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.glob("part-*.json") if not p.name.startswith("."))

    def _read_part(self, path: Path) -> dict[str, Any] | None:
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
            if len(part["indices"]) != len(part["results"]):
                raise ValueError("indices and results differ in length")
            return part
        except (OSError, ValueError, KeyError, TypeError) as err:
            # Atomic writes make this a disk or hand-editing problem; set it aside and redo its items.
            bad = path.with_suffix(".corrupt")
            log.warning("part %s is unreadable (%s); moved to %s, its items will be redone", path, err, bad.name)
            try:
                os.replace(path, bad)
            except OSError:
                pass
            return None

    def _parts_in_write_order(self) -> list[Path]:
        """Part files oldest first (so the latest failure record of an item wins), name as the tie-break."""
        stamped = []
        for path in self.part_files():
            try:
                stamped.append((path.stat().st_mtime_ns, path.name, path))
            except OSError:  # removed by a concurrent ``clear``/``.corrupt`` move
                continue
        return [path for _, _, path in sorted(stamped)]

    def scan(self) -> tuple[set[int], dict[int, str]]:
        """``(succeeded, failed)``: indices with a result, and index -> latest error of those without one."""
        succeeded: set[int] = set()
        failed: dict[int, str] = {}
        for path in self._parts_in_write_order():
            part = self._read_part(path)
            if part is not None:
                succeeded.update(int(i) for i in part["indices"])
                failed.update((int(i), why) for i, why in part.get("failures", {}).items())
        return succeeded, {i: why for i, why in failed.items() if i not in succeeded}

    def done_indices(self) -> set[int]:
        """Every index attempted so far: succeeded, or failed (and not yet retried successfully)."""
        succeeded, failed = self.scan()
        return succeeded | set(failed)

    def pending(self, rank: int = 0, world_size: int = 1, retry_failed: bool = False) -> list[int]:
        """This rank's indices still to do, in order: never attempted, and with ``retry_failed`` (what narrate
        does) the failed ones too."""
        succeeded, failed = self.scan()
        skip = succeeded if retry_failed else succeeded | set(failed)
        return [i for i in assigned_indices(self.total, rank, world_size) if i not in skip]

    def write_part(self, results: dict[int, Any], failures: dict[int, str] | None = None, rank: int = 0) -> Path:
        """Atomically write one part with ``results`` (index -> JSON-able record) and ``failures`` (index -> why)."""
        failures = failures or {}
        overlap = set(results) & set(failures)
        if overlap:
            raise ValueError(f"indices both succeeded and failed: {sorted(overlap)[:5]}")
        every = sorted(set(results) | set(failures))
        if not every:
            raise ValueError("write_part: nothing to write")
        bad = [i for i in every if not 0 <= i < self.total]
        if bad:
            raise ValueError(f"indices outside 0..{self.total - 1}: {bad[:5]}")
        indices = sorted(results)
        body = {"indices": indices, "results": [results[i] for i in indices],
                "failures": {str(i): failures[i] for i in sorted(failures)}}
        name = f"part-{every[0]:010d}-{every[-1]:010d}-r{rank:05d}-{uuid.uuid4().hex[:8]}.json"
        path = self.parts_dir / name
        atomic_write_text(path, json.dumps(body, ensure_ascii=False))
        failpoint("shards.part_written", name)
        return path

    # ------------------------------------------------------------------------------------------------------ merge
    def collect(self) -> tuple[dict[int, Any], dict[int, str]]:
        """Results (index -> record, in index order) and the failures of indices without a result (latest error);
        raises unless every index was attempted and none succeeded twice."""
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
        duplicates: list[int] = []
        for path in self._parts_in_write_order():
            part = self._read_part(path)
            if part is None:
                continue
            for i, rec in zip(part["indices"], part["results"]):
                i = int(i)
                if i in results:
                    duplicates.append(i)
                results[i] = rec
            for i, why in part.get("failures", {}).items():
                failures[int(i)] = why  # a retried item fails again: one entry, the latest reason
        failures = {i: why for i, why in failures.items() if i not in results}  # a retry that succeeded
        if duplicates:
            raise ShardError(f"{self.parts_dir}: {len(duplicates)} indices appear in more than one part "
                             f"(first: {sorted(duplicates)[:10]}); parts from two different runs were mixed")
        missing = [i for i in range(self.total) if i not in results and i not in failures]
        if missing:
            raise ShardError(f"{self.parts_dir}: {len(missing)} of {self.total} items are not done yet "
                             f"(first: {missing[:10]}); rerun the same command to finish them")
        extra = [i for i in list(results) + list(failures) if not 0 <= i < self.total]
        if extra:
            raise ShardError(f"{self.parts_dir}: indices outside 0..{self.total - 1}: {extra[:10]}")
        return {i: results[i] for i in sorted(results)}, {i: failures[i] for i in sorted(failures)}

    def is_complete(self) -> bool:
        return len(self.done_indices()) >= self.total


def batched(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
