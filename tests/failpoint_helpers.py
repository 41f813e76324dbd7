"""Helpers of the kill tests: run a `lavila` verb in a subprocess with fail points, read its trace, compare outputs.

A kill test does, for a job J:

1. ``trace = run_cli(J, trace=path)``: an uninterrupted reference run that records every fail point it passes;
2. for each term of ``kill_plan(read_trace(path))``: ``run_cli(J, failpoints=term)`` exits with 137 at that exact
   point, ``run_cli(J)`` again finishes the job;
3. the outputs equal the reference run's and ``leftover_temps(folder)`` is empty.

See ``lavila/failpoints.py`` for the ``LAVILA_FAILPOINTS`` syntax and ``docs/reliability.md`` for the point names.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from lavila.failpoints import ENV, EXIT_CODE, TRACE_ENV

KILLED = EXIT_CODE


def cli_env(failpoints: str | None = None, trace: str | os.PathLike | None = None,
            extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: ours without fail-point variables, plus the ones asked for."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, TRACE_ENV)}
    env.setdefault("PYTHONUNBUFFERED", "1")
    if failpoints:
        env[ENV] = failpoints
    if trace:
        env[TRACE_ENV] = str(trace)
    env.update(extra or {})
    return env


def cli_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "lavila.cli", *map(str, args)]


def run_cli(args: Sequence[str], *, failpoints: str | None = None, trace: str | os.PathLike | None = None,
            timeout: float = 120, env: dict[str, str] | None = None,
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m lavila.cli ARGS`` to completion (or to its fail point); returns the finished process.

    ``proc.returncode == KILLED`` (137) when a fail point fired. Output is captured as text.
    """
    return subprocess.run(cli_command(args), env=cli_env(failpoints, trace, env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_cli(args: Sequence[str], *, failpoints: str | None = None, trace: str | os.PathLike | None = None,
              env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None) -> subprocess.Popen:
    """Start the CLI without waiting (to kill it, or one of its workers, from outside).

    It runs in a new session, so :func:`kill_group` can end it and every process it started if a test fails.
    Its output goes to temporary files, not pipes (a surviving worker holding a pipe would block the reader); read
    it with :func:`output_of`.
    """
    import tempfile

    out = tempfile.TemporaryFile("w+")
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cli_command(args), env=cli_env(failpoints, trace, env), cwd=cwd, stdout=out, stderr=err,
                            text=True, start_new_session=True)
    proc.out_file, proc.err_file = out, err  # type: ignore[attr-defined]
    return proc


def output_of(proc: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a process started by :func:`start_cli` (after it ended)."""
    texts = []
    for f in (proc.out_file, proc.err_file):  # type: ignore[attr-defined]
        f.seek(0)
        texts.append(f.read())
    return texts[0], texts[1]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the session of a :func:`start_cli` process (it and anything it left running)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


def read_trace(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """``(pid, point, detail)`` of every pass, in order (empty when the file does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, name, detail = (line.split("\t") + ["", ""])[:3]
        out.append((int(pid), name, detail))
    return out


def kill_plan(trace: Iterable[tuple[int, str, str]], last_too: bool = True) -> list[str]:
    """One ``LAVILA_FAILPOINTS`` term per distinct (point, detail): its first pass, and its last when it repeats.

    ``name@detail=n`` counts only the passes with that detail, so the term stops the rerun of the same job at the
    same place as in the trace (the job is deterministic given its inputs).
    """
    counts = Counter((name, detail) for _, name, detail in trace)
    plan = []
    for (name, detail), n in counts.items():
        key = f"{name}@{detail}" if detail else name
        plan.append(f"{key}=1")
        if last_too and n > 1:
            plan.append(f"{key}={n}")
    return plan


def point_names(trace: Iterable[tuple[int, str, str]]) -> set[str]:
    return {name for _, name, _ in trace}


def leftover_temps(root: str | os.PathLike) -> list[Path]:
    """Temporary files of interrupted writes anywhere under `root` (atomic writes' and encoders' ``*.tmp``)."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and (p.name.endswith(".tmp") or ".tmp." in p.name))


def tree_digest(root: str | os.PathLike, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under `root` (minus `skip`), to compare two runs' outputs."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not skip(p)}


def one_line_error(proc: subprocess.CompletedProcess, verb: str, codes: Sequence[int] = (1,)) -> str:
    """The error line of a CLI run that failed the expected way: exit status in `codes`, no traceback, and the
    last line of stderr the only ``lavila VERB: error: ...`` line (what ``lavila.cli.main`` prints)."""
    assert proc.returncode in codes, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    prefix = f"lavila {verb}: error: "
    assert lines and lines[-1].startswith(prefix), proc.stderr[-3000:]
    assert [line for line in lines if line.startswith(prefix)] == [lines[-1]], proc.stderr[-3000:]
    return lines[-1]


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie — dead, not yet reaped — counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it is truthy or `timeout` seconds pass; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
