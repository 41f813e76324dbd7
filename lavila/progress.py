"""Progress of long jobs: a tqdm bar on a terminal, plain periodic lines in a log.

tqdm redraws its bar with a carriage return on every refresh. Under a pipe, ``nohup`` or SLURM that is one
ever-growing line (the demo's log became a single 130 kB line) that ``tail``/``grep`` cannot read. Every long job
(training epochs, narrate, rephrase, embedding for evaluation and search, prepare-ego4d, downloads) therefore asks
:func:`progress` for its bar: on a terminal (or in Jupyter) it is tqdm; otherwise a :class:`LineProgress` that
prints one self-contained line every ``LAVILA_PROGRESS_INTERVAL`` (default 30 seconds) and one when it closes::

    epoch 1/5: 1200/4000 steps (30.0%), 3.41 steps/s, elapsed 0:05:52, ETA 0:13:41, loss=2.1345, lr=2.99e-05

``LAVILA_PROGRESS_INTERVAL`` is a number of seconds (``0``: a line per update, for tests) or a percentage of the
total (``10%``: a line each time another tenth is done). ``--no-progress`` (``progress: false``) still turns both
forms off. The line form offers the part of tqdm's interface the jobs use: ``update``, ``set_postfix``,
``set_postfix_str``, ``set_description``, ``write``, ``close``, iteration and use as a context manager.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

ENV = "LAVILA_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


def interactive(stream: Any) -> bool:
    """Whether `stream` shows a redrawn bar properly: a terminal, or a Jupyter kernel's output."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False
    return "ipykernel" in sys.modules and stream in (sys.stderr, sys.stdout)


def parse_interval(value: str | None) -> tuple[float, float | None]:
    """``(seconds, percent)`` of a ``LAVILA_PROGRESS_INTERVAL`` value; one of them is used (percent wins)."""
    text = (value or "").strip()
    if not text:
        return DEFAULT_INTERVAL_S, None
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError(text)
            return DEFAULT_INTERVAL_S, pct
        seconds = float(text.rstrip("s"))
        if seconds < 0:
            raise ValueError(text)
        return seconds, None
    except ValueError:
        print(f"warning: {ENV}={value!r} is neither seconds (e.g. 30) nor a percentage (e.g. 10%); using "
              f"{DEFAULT_INTERVAL_S:g} s", file=sys.stderr)
        return DEFAULT_INTERVAL_S, None


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def _fmt_count(n: float, unit_scale: bool) -> str:
    if unit_scale:
        for prefix in ("", "k", "M", "G", "T"):
            if abs(n) < 1000:
                return f"{n:.1f}{prefix}" if prefix else f"{n:g}"
            n /= 1000
        return f"{n:.1f}P"
    return f"{n:g}" if isinstance(n, float) else str(n)


class LineProgress:
    """tqdm's interface, printing a full line at fixed intervals instead of redrawing (see module docstring)."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "", *,
                 unit: str = "it", initial: float = 0, file: IO[str] | None = None, disable: bool = False,
                 interval: str | None = None, unit_scale: bool = False, clock: Any = time.monotonic,
                 **_ignored: Any) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.file, self.disable, self.unit_scale, self.clock = file, disable, unit_scale, clock
        self.seconds, self.percent = parse_interval(os.environ.get(ENV) if interval is None else interval)
        self.postfix = ""
        self.start = self.last = clock()
        self.last_n = initial
        self.lines = 0
        self.closed = False

    # --- tqdm interface ---------------------------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        if self.disable or self.closed:
            return
        self.n += n
        if self._due():
            self._print()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def write(self, s: str, file: IO[str] | None = None, end: str = "\n") -> None:
        stream = file or sys.stdout
        stream.write(s + end)
        stream.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and (self.n != self.last_n or self.lines == 0):
            self._print()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress was built without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    # --- lines ------------------------------------------------------------------------------------------------
    def _due(self) -> bool:
        if self.percent is not None and self.total:
            step = self.total * self.percent / 100
            return int(self.n / step) > int(self.last_n / step)
        return self.clock() - self.last >= self.seconds

    def line(self) -> str:
        elapsed = self.clock() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        units = self.unit if self.unit.endswith("s") or self.unit in ("B", "it") else self.unit + "s"
        parts = []
        if self.total:
            parts.append(f"{_fmt_count(self.n, self.unit_scale)}/{_fmt_count(self.total, self.unit_scale)} {units} "
                         f"({100 * self.n / self.total:.1f}%)")
        else:
            parts.append(f"{_fmt_count(self.n, self.unit_scale)} {units}")
        parts.append(f"{_fmt_count(rate, True) if self.unit_scale else f'{rate:.2f}'} {units}/s")
        parts.append(f"elapsed {_fmt_time(elapsed)}")
        if self.total and rate > 0:
            parts.append(f"ETA {_fmt_time((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _print(self) -> None:
        stream = self.file or sys.stderr
        try:
            stream.write(self.line() + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken log must not stop the job
            self.disable = True
            return
        self.last, self.last_n = self.clock(), self.n
        self.lines += 1


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, initial: float = 0, file: IO[str] | None = None, leave: bool = True,
             **tqdm_kwargs: Any) -> Any:
    """A progress bar for a long job: tqdm on a terminal, :class:`LineProgress` in a log, nothing when disabled.

    `file` is the stream (default stderr); extra keyword arguments go to tqdm (``dynamic_ncols``, ``smoothing``,
    ``unit_scale``, ...). A disabled bar is a disabled tqdm: ``write`` still prints.
    """
    stream = file or sys.stderr
    if enabled and not interactive(stream):
        return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file,
                            unit_scale=bool(tqdm_kwargs.get("unit_scale", False)))
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, leave=leave,
                disable=not enabled, **tqdm_kwargs)


__all__ = ["DEFAULT_INTERVAL_S", "ENV", "LineProgress", "interactive", "parse_interval", "progress"]
