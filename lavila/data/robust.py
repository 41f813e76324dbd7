"""Bad videos are reported, counted and replaced by other real samples — never by zeros.

The reference silently returns frame 0 repeated (or black 240x320 frames) when decoding fails, which trains on
garbage and hides broken downloads. Here a sample whose video cannot be decoded is logged with its path and reason,
counted by kind in a :class:`DecodeFailures` counter shared by all DataLoader workers, and replaced by the next index
whose video is not already known to be bad. When the failure rate passes `max_failure_rate` (after `min_samples`
attempts), the job stops with a message that says which kinds of failure and which file failed last.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from lavila.data.decode import FAILURE_KINDS, VideoDecodeError

log = logging.getLogger("lavila.data")


class DecodeFailureRateExceeded(RuntimeError):
    """Too many samples failed to decode: the data on disk is broken, training on the rest would mislead."""


class DecodeFailures:
    """Counts decode attempts and failures (by kind) across processes.

    The counters live in shared memory created in the main process; DataLoader workers receive them when they start
    (fork or spawn), so `summary()` in the main process sees every worker's failures and the rate check is global.
    The list of recent failures (`recent`) is per process, for messages.
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
        self.recent: list[tuple[str, str, str]] = []  # (path, kind, reason), this process only

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
            failures, attempts = sum(self._by_kind), self._attempts.value
        self.recent = (self.recent + [(err.path, kind, err.reason)])[-self.keep_recent :]
        if not quiet:
            log.warning("sample replaced (%d of %d samples failed so far): %s", failures, attempts, err)
        self.check_rate(err)

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

    def check_rate(self, last: VideoDecodeError | None = None) -> None:
        attempts = self.attempts
        if attempts < self.min_samples or self.rate <= self.max_failure_rate:
            return
        tail = f"; last failure: {last}" if last is not None else ""
        raise DecodeFailureRateExceeded(
            f"{self.summary()} — more than max_failure_rate={self.max_failure_rate:.2%} after {attempts} samples"
            f"{tail}. Fix or remove the broken videos (or raise the threshold knowingly)."
        )


class ResilientDataset(Dataset):
    """Wraps a dataset whose `__getitem__` may raise :class:`VideoDecodeError`.

    A failing index is replaced by the next index (i+1, i+2, ... wrapping around), skipping indices whose video is
    already known to be bad when the wrapped dataset tells us paths via `sample_path(i)` — neighbouring rows of a
    metadata file usually share a video, so retrying them blindly would fail again. Replacement is deterministic.
    The counter sees one event per requested index (success, or failure + replacement); each bad video is logged
    once per process when first found.
    """

    def __init__(self, dataset: Dataset, failures: DecodeFailures | None = None, max_retries: int = 20) -> None:
        self.dataset = dataset
        self.failures = failures if failures is not None else DecodeFailures()
        self.max_retries = max_retries
        self._bad_paths: dict[str, VideoDecodeError] = {}  # per process
        self._path_of: Callable[[int], str | None] | None = getattr(dataset, "sample_path", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _try(self, j: int) -> tuple[Any, VideoDecodeError | None, bool]:
        """(item, error, whether a decode was attempted); videos already known to be bad are not retried."""
        path = self._path_of(j) if self._path_of is not None else None
        if path is not None and path in self._bad_paths:
            return None, self._bad_paths[path], False
        try:
            return self.dataset[j], None, True
        except VideoDecodeError as err:
            if err.path not in self._bad_paths:
                log.warning("bad video: %s", err)
            self._bad_paths[err.path] = err  # the failing file (may be the next chunk, not the sample's own)
            return None, err, True

    def __getitem__(self, index: int):
        item, err, _ = self._try(index)
        if err is None:
            self.failures.record_success()
            return item
        # Counted once per requested sample, so the rate is "fraction of samples replaced".
        self.failures.record_failure(err, quiet=True)
        n = len(self)
        decodes = 0
        for step in range(1, n):
            replacement, bad, decoded = self._try((index + step) % n)
            if bad is None:
                return replacement
            decodes += decoded
            if decodes >= self.max_retries:
                break
        raise DecodeFailureRateExceeded(
            f"no decodable sample found to replace index {index} ({err}); {self.failures.summary()}"
        )


__all__ = ["DecodeFailureRateExceeded", "DecodeFailures", "ResilientDataset"]
