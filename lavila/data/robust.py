"""Bad videos are reported, counted and replaced by other real samples — never by zeros.

The reference silently returns frame 0 repeated (or black 240x320 frames) when decoding fails, which trains on
garbage and hides broken downloads. Here a sample whose video cannot be decoded is logged with its path and reason,
counted by kind (and by file) in a :class:`DecodeFailures` counter shared by all DataLoader workers, and replaced by
another real sample.

**Which sample replaces it is a pure function of the sample, the seed and the epoch** (never of what this process
happened to see before), so a resumed run, or one with another worker count, trains on exactly the same samples and
ends with bit-identical weights: the candidates are the next indices i+1, i+2, ... (wrapping), minus those whose file
already failed *while replacing this sample*, and every candidate is loaded under its own RNG seed derived from the
sample's seed (:mod:`lavila.data.seeding`). A per-process cache of files that cannot even be *opened* (missing,
empty, not a video) only saves work: such a file fails the same way for every sample, so skipping the decode gives
the answer the decode would have given.

Failure thresholds (``max_failure_rate``): the rate is checked while loading (after ``min_samples`` requests, an early
abort) and — by the training loop, through :func:`check_epoch_end` — at the end of every epoch over that epoch's
samples, however few. The epoch summary (per kind, worst files) is printed and written to ``metrics.jsonl``; over
the threshold the run stops with a one-line :class:`DecodeFailureRateError` naming the worst files.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from lavila.data.decode import FAILURE_KINDS, VideoDecodeError
from lavila.data.seeding import current_sample_seed, mix_seed, seeded_rngs
from lavila.errors import LavilaError

log = logging.getLogger("lavila.data")

# Failures of *opening* a file: every sample of that file fails the same way, so a cache of them is safe.
OPEN_FAILURE_KINDS = frozenset({"missing", "empty", "unreadable", "no_video_stream"})

_FILE_SLOTS = 256  # distinct (file, kind) pairs tracked for "worst files" (totals are exact beyond that)
_PATH_BYTES = 512
_FILES_SHOWN = 3  # per kind, in messages


class DecodeFailureRateError(LavilaError):
    """Too many samples failed to decode: the data on disk is broken, training on the rest would mislead.

    Raised in a DataLoader worker, PyTorch re-creates the error in the main process from a message that embeds the
    worker's traceback; the constructor keeps only the original one-line message, so users see one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_strip_worker_traceback(message, type(self).__name__))


DecodeFailureRateExceeded = DecodeFailureRateError  # the earlier name


def _strip_worker_traceback(message: str, name: str) -> str:
    if not message.startswith(f"Caught {name} ") or "\n" not in message:
        return message
    for line in reversed(message.splitlines()):
        head, sep, tail = line.partition(": ")
        if sep and head.rsplit(".", 1)[-1] == name:
            return tail
    return message


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DecodeReport:
    """Counts over a span of samples (an epoch, or a process's lifetime): requests, failures by kind and by file."""

    attempts: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    files: dict[tuple[str, str], int] = field(default_factory=dict)  # (path, kind) -> failed samples
    max_failure_rate: float = 1.0

    @property
    def failures(self) -> int:
        return sum(self.by_kind.values())

    @property
    def rate(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0

    @property
    def over_threshold(self) -> bool:
        return self.attempts > 0 and self.rate > self.max_failure_rate

    def __sub__(self, earlier: DecodeReport) -> DecodeReport:
        by_kind = {k: n - earlier.by_kind.get(k, 0) for k, n in self.by_kind.items()}
        files = {f: n - earlier.files.get(f, 0) for f, n in self.files.items()}
        return DecodeReport(self.attempts - earlier.attempts, {k: n for k, n in by_kind.items() if n > 0},
                            {f: n for f, n in files.items() if n > 0}, self.max_failure_rate)

    @staticmethod
    def merge(reports: Iterable[DecodeReport]) -> DecodeReport:
        """Sum of several counters (ranks, or main + aux datasets); the strictest threshold applies."""
        out = DecodeReport(max_failure_rate=1.0)
        for r in reports:
            out.attempts += r.attempts
            for k, n in r.by_kind.items():
                out.by_kind[k] = out.by_kind.get(k, 0) + n
            for f, n in r.files.items():
                out.files[f] = out.files.get(f, 0) + n
            out.max_failure_rate = min(out.max_failure_rate, r.max_failure_rate)
        return out

    def worst_files(self, kind: str | None = None) -> list[tuple[str, str, int]]:
        """(path, kind, failed samples), most failures first (then by path, for stable messages)."""
        rows = [(p, k, n) for (p, k), n in self.files.items() if kind is None or k == kind]
        return sorted(rows, key=lambda r: (-r[2], r[0]))

    def kinds_text(self) -> str:
        """``5 x missing (a.mp4, b.mp4, ...), 1 x truncated (c.mp4)``, most frequent kind first."""
        parts = []
        for kind, n in sorted(self.by_kind.items(), key=lambda kv: (-kv[1], FAILURE_KINDS.index(kv[0]))):
            paths = [p for p, _, _ in self.worst_files(kind)]
            shown = ", ".join(paths[:_FILES_SHOWN]) + (", ..." if len(paths) > _FILES_SHOWN else "")
            parts.append(f"{n} x {kind}" + (f" ({shown})" if shown else ""))
        return ", ".join(parts) or "none"

    def summary(self) -> str:
        """One line for the console: counts, rate, threshold, kinds and their worst files."""
        return (f"{self.failures} of {self.attempts} samples failed to decode ({self.rate:.2%}, "
                f"max_failure_rate={self.max_failure_rate:.2%}): {self.kinds_text()}")

    def record(self) -> dict[str, Any]:
        """For ``metrics.jsonl``: totals, per-kind counts (flat, so TensorBoard plots them) and the worst files."""
        return {"attempts": self.attempts, "failures": self.failures, "rate": self.rate,
                "max_failure_rate": self.max_failure_rate, **{k: self.by_kind[k] for k in sorted(self.by_kind)},
                "worst_files": [{"path": p, "kind": k, "failures": n} for p, k, n in self.worst_files()[:10]]}

    def error(self, where: str) -> DecodeFailureRateError:
        return DecodeFailureRateError(
            f"{where}{self.rate:.2%} of {self.attempts} samples failed to decode (more than max_failure_rate="
            f"{self.max_failure_rate:.2%}): {self.kinds_text()}. Fix or remove the broken videos (or raise "
            "max_decode_failures knowingly)")

    def to_state(self) -> dict[str, Any]:
        """Plain types (for ``all_gather_object``)."""
        return {"attempts": self.attempts, "by_kind": dict(self.by_kind), "files": list(self.files.items()),
                "max_failure_rate": self.max_failure_rate}

    @staticmethod
    def from_state(state: dict[str, Any]) -> DecodeReport:
        return DecodeReport(state["attempts"], dict(state["by_kind"]), {tuple(f): n for f, n in state["files"]},
                            state["max_failure_rate"])


# ---------------------------------------------------------------------------------------------------------------
# The shared counter
# ---------------------------------------------------------------------------------------------------------------


def _encode_path(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    return raw if len(raw) <= _PATH_BYTES else b"..." + raw[-(_PATH_BYTES - 3):]


class DecodeFailures:
    """Counts decode attempts and failures (by kind and by file) across processes.

    The counters live in shared memory created in the main process; DataLoader workers receive them when they start
    (fork or spawn), so the main process sees every worker's failures: :meth:`report`, :meth:`epoch_report` and the
    thresholds are global over workers. The list of recent failures (`recent`) is per process, for messages.
    """

    def __init__(self, max_failure_rate: float = 0.05, min_samples: int = 100, keep_recent: int = 20) -> None:
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"max_failure_rate must be in [0, 1], got {max_failure_rate}")
        self.max_failure_rate = max_failure_rate
        self.min_samples = min_samples
        self.keep_recent = keep_recent
        # A spawn-context lock can be inherited by fork workers *and* pickled to spawn/forkserver workers; a
        # fork-context one refuses the latter.
        ctx = mp.get_context("spawn")
        self._lock = ctx.Lock()
        self._attempts = ctx.RawValue("q", 0)
        self._by_kind = ctx.RawArray("q", len(FAILURE_KINDS))
        # "worst files": a small table of (path, kind) -> failed samples
        self._n_files = ctx.RawValue("i", 0)
        self._paths = ctx.RawArray("c", _FILE_SLOTS * _PATH_BYTES)
        self._path_len = ctx.RawArray("i", _FILE_SLOTS)
        self._file_kind = ctx.RawArray("b", _FILE_SLOTS)
        self._file_count = ctx.RawArray("q", _FILE_SLOTS)
        self.recent: list[tuple[str, str, str]] = []  # (path, kind, reason), this process only
        self._epoch_mark = DecodeReport(max_failure_rate=max_failure_rate)  # main process: counts at the last epoch end

    # -------------------------------------------------------------------------------------------------- counting
    def record_success(self) -> None:
        """A requested sample decoded."""
        with self._lock:
            self._attempts.value += 1

    def record_failure(self, err: VideoDecodeError, quiet: bool = False) -> None:
        """A requested sample could not be decoded (and was replaced); `quiet` skips the log line."""
        kind = err.kind if err.kind in FAILURE_KINDS else "decode_error"
        with self._lock:
            self._attempts.value += 1
            self._by_kind[FAILURE_KINDS.index(kind)] += 1
            self._count_file(err.path, FAILURE_KINDS.index(kind))
            failures, attempts = sum(self._by_kind), self._attempts.value
        self.recent = (self.recent + [(err.path, kind, err.reason)])[-self.keep_recent:]
        if not quiet:
            log.warning("sample replaced (%d of %d samples failed so far): %s", failures, attempts, err)
        self.check_rate(err)

    def _count_file(self, path: str, kind_index: int) -> None:
        """Under the lock. Linear scan: failures are rare and the table small."""
        key = _encode_path(path)
        n = self._n_files.value
        for slot in range(n):
            if self._file_kind[slot] == kind_index and self._path_len[slot] == len(key) and \
                    self._paths[slot * _PATH_BYTES: slot * _PATH_BYTES + len(key)] == key:
                self._file_count[slot] += 1
                return
        if n < _FILE_SLOTS:
            self._paths[n * _PATH_BYTES: n * _PATH_BYTES + len(key)] = key
            self._path_len[n], self._file_kind[n], self._file_count[n] = len(key), kind_index, 1
            self._n_files.value = n + 1

    @property
    def attempts(self) -> int:
        return int(self._attempts.value)

    @property
    def failures(self) -> int:
        return int(sum(self._by_kind))

    def counts(self) -> dict[str, int]:
        """Failures per kind (only kinds that occurred)."""
        with self._lock:
            return {k: int(n) for k, n in zip(FAILURE_KINDS, self._by_kind) if n}

    @property
    def rate(self) -> float:
        attempts = self.attempts
        return self.failures / attempts if attempts else 0.0

    def as_dict(self) -> dict[str, Any]:
        """For logs / JSON lines: attempts, failures, rate and per-kind counts."""
        return {"attempts": self.attempts, "failures": self.failures, "rate": self.rate, **self.counts()}

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {n}" for k, n in self.counts().items()) or "none"
        return f"{self.failures} of {self.attempts} samples failed to decode ({100 * self.rate:.2f}%): {counts}"

    def report(self) -> DecodeReport:
        """Everything counted so far (all workers), with the worst files."""
        with self._lock:
            files = {}
            for slot in range(self._n_files.value):
                raw = self._paths[slot * _PATH_BYTES: slot * _PATH_BYTES + self._path_len[slot]]
                files[(raw.decode("utf-8", "replace"), FAILURE_KINDS[self._file_kind[slot]])] = \
                    int(self._file_count[slot])
            return DecodeReport(int(self._attempts.value),
                                {k: int(n) for k, n in zip(FAILURE_KINDS, self._by_kind) if n}, files,
                                self.max_failure_rate)

    # ------------------------------------------------------------------------------------------------ thresholds
    def check_rate(self, last: VideoDecodeError | None = None) -> None:
        """Early abort while loading: over the threshold after at least `min_samples` requests."""
        attempts = self.attempts
        if attempts < self.min_samples or self.rate <= self.max_failure_rate:
            return
        err = self.report().error(f"after {attempts} samples: ")
        tail = f"; last failure: {last}" if last is not None else ""
        raise DecodeFailureRateError(f"{err}{tail}")

    def epoch_report(self) -> DecodeReport:
        """The counts since the previous call (one epoch, when the loop calls it at every epoch end)."""
        now = self.report()
        span, self._epoch_mark = now - self._epoch_mark, now
        return span

    def check_epoch_end(self, epoch: int | None = None) -> DecodeReport:
        """This epoch's report; raises :class:`DecodeFailureRateError` over the threshold (however few samples)."""
        report = self.epoch_report()
        if report.over_threshold:
            raise report.error(f"epoch {epoch}: " if epoch is not None else "")
        return report


# ---------------------------------------------------------------------------------------------------------------
# The dataset wrapper
# ---------------------------------------------------------------------------------------------------------------


class ResilientDataset(Dataset):
    """Wraps a dataset whose `__getitem__` may raise :class:`VideoDecodeError`; replaces failing samples.

    A failing index i is replaced by the first of i+1, i+2, ... (wrapping) that decodes, skipping candidates whose
    file (``sample_path(j)`` of the wrapped dataset, when it has one) already failed *while looking for this
    replacement* — neighbouring rows of a metadata file usually share a video. At most `max_retries` candidates are
    loaded. Each candidate j is loaded under RNGs seeded by ``mix_seed(sample seed, j)``, so its jitter does not
    depend on how many draws earlier attempts consumed. The outcome therefore depends only on (sample, seed,
    epoch) and the files — see the module docstring. The counter sees one event per requested index (success, or
    failure + replacement); each bad file is logged once per process.
    """

    def __init__(self, dataset: Dataset, failures: DecodeFailures | None = None, max_retries: int = 20) -> None:
        self.dataset = dataset
        self.failures = failures if failures is not None else DecodeFailures()
        self.max_retries = max_retries
        self._unopenable: dict[str, VideoDecodeError] = {}  # per process; only saves work (see module docstring)
        self._logged: set[str] = set()  # per process; only for the log
        self._path_of: Callable[[int], str | None] | None = getattr(dataset, "sample_path", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _path(self, j: int) -> str | None:
        return self._path_of(j) if self._path_of is not None else None

    def _load(self, j: int) -> tuple[Any, VideoDecodeError | None]:
        path = self._path(j)
        if path is not None and path in self._unopenable:  # the decode would fail exactly like this
            return None, self._unopenable[path]
        try:
            return self.dataset[j], None
        except VideoDecodeError as err:
            if err.path not in self._logged:
                self._logged.add(err.path)
                log.warning("bad video: %s", err)
            if err.kind in OPEN_FAILURE_KINDS:  # any sample starting in this file fails to open it the same way
                self._unopenable[err.path] = err
            return None, err

    def __getitem__(self, index: int):
        seed = current_sample_seed()  # SeededDataset: sample_seed(seed, epoch, index); read before any draw
        item, err = self._load(index)
        if err is None:
            self.failures.record_success()
            return item
        # Counted once per requested sample, so the rate is "fraction of samples replaced".
        self.failures.record_failure(err, quiet=True)
        bad_files = {err.path}
        n = len(self)
        loaded = 0
        for step in range(1, n):
            j = (index + step) % n
            if self._path(j) in bad_files:
                continue
            with seeded_rngs(mix_seed(seed, j)):
                replacement, bad = self._load(j)
            if bad is None:
                return replacement
            bad_files.add(bad.path)
            loaded += 1
            if loaded >= self.max_retries:
                break
        raise DecodeFailureRateError(
            f"no decodable sample found to replace index {index} ({err}); {self.failures.summary()}"
        )


# ---------------------------------------------------------------------------------------------------------------
# The training loop's end-of-epoch check
# ---------------------------------------------------------------------------------------------------------------


def find_failure_counters(dataset: Any) -> list[DecodeFailures]:
    """The distinct :class:`DecodeFailures` inside a dataset (through wrappers, ``ConcatDataset`` and subsets)."""
    found: dict[int, DecodeFailures] = {}
    stack, seen = [dataset], set()
    while stack:
        ds = stack.pop()
        if id(ds) in seen:
            continue
        seen.add(id(ds))
        failures = getattr(ds, "failures", None) if isinstance(ds, ResilientDataset) else None
        if isinstance(failures, DecodeFailures):
            found.setdefault(id(failures), failures)
        inner = vars(ds) if hasattr(ds, "__dict__") else {}
        stack.extend(v for k, v in inner.items() if k == "dataset" and isinstance(v, Dataset))
        stack.extend(v for v in inner.get("datasets", ()) if isinstance(v, Dataset))
    return list(found.values())


def _gather_over_ranks(report: DecodeReport) -> DecodeReport:
    import torch.distributed as torch_dist

    from lavila import dist

    if dist.get_world_size() == 1 or not torch_dist.is_initialized():
        return report
    states: list[Any] = [None] * dist.get_world_size()
    torch_dist.all_gather_object(states, report.to_state())
    return DecodeReport.merge(DecodeReport.from_state(s) for s in states)


def check_epoch_end(dataset: Any, *, epoch: int, step: int, log_record: Callable[[dict[str, Any]], None] | None = None,
                    main: bool = True) -> DecodeReport | None:
    """End-of-epoch decode-failure check of a training set (collective under DDP: every rank calls it).

    Summed over the dataset's counters and over ranks (so every rank takes the same decision), for the samples
    loaded since the previous epoch end (after a mid-epoch resume: since the resume). Prints the summary line when a
    sample failed (a clean epoch stays quiet) and passes a ``{"kind": "decode_failures", ...}`` record to
    `log_record` (the loop's ``metrics.jsonl`` writer), then raises :class:`DecodeFailureRateError` if the epoch's
    rate is over the threshold. ``None`` when the dataset has no :class:`ResilientDataset` inside.
    """
    counters = find_failure_counters(dataset)
    if not counters:
        return None
    report = _gather_over_ranks(DecodeReport.merge(c.epoch_report() for c in counters))
    if main and report.failures:  # a clean epoch says nothing: the record below and the run's summary count it
        print(f"[decode failures @ epoch {epoch}] {report.summary()}", flush=True)
    if log_record is not None:
        log_record({"kind": "decode_failures", "step": step, "epoch": epoch, **report.record()})
    if report.over_threshold:
        raise report.error(f"epoch {epoch}: ")
    return report


__all__ = [
    "DecodeFailureRateError",
    "DecodeFailureRateExceeded",
    "DecodeFailures",
    "DecodeReport",
    "OPEN_FAILURE_KINDS",
    "ResilientDataset",
    "check_epoch_end",
    "find_failure_counters",
]
