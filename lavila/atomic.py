"""Atomic file writes, the one mechanism every long job uses (checkpoints, shards, caches, metadata, reports).

A write goes to a temporary file in the destination folder, is fsynced, renamed over the target with
``os.replace`` and the folder is fsynced: a crash or a kill leaves either the old file or the new one, never a
truncated file that a resumed job would trust.

A kill between the temporary file's creation and the rename leaves that temporary file behind (with a full-size
checkpoint: gigabytes). Its name records its owner, ``.<target>.lavila-<pid>@<host>.<random>.tmp``, so a job that
starts in a folder can remove the stale temporaries of its own outputs with :func:`remove_stale_temps` — those of
dead processes only, never the file another live process (another rank, another job) is still writing.

A full disk is reported as :class:`DiskFullError` ("No space left on device: <target>"), not as the write error of
the library that was writing (``torch.save`` says ``unexpected pos ...`` with neither errno nor path); the previous
file stays intact. Any other failure of the system (a read-only file system, a permission) is an ``OSError`` that
names the target, not the temporary file.

Every step passes a fail point (:mod:`lavila.failpoints`): ``atomic.tmp_written``, ``atomic.before_rename`` and
``atomic.after_rename``, with the target's file name as detail.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from lavila.failpoints import failpoint

log = logging.getLogger(__name__)

# `.<target>.lavila-<pid>@<host>.<8 random chars of mkstemp>.tmp`; the older `.<target>.<random>.tmp` has no owner.
_TEMP = re.compile(r"^\.(?P<target>.+?)\.(?:lavila-(?P<pid>\d+)@(?P<host>.+)\.)?(?P<rand>[a-z0-9_]{8})\.tmp$")
# Temporaries of another host cannot be checked for a live owner: stale when untouched this long (a writer touches
# its file continuously; the fsync and rename after the last byte take seconds).
OTHER_HOST_MAX_AGE_S = 3600.0


class DiskFullError(OSError, RuntimeError):
    """A write failed because the device (or the quota) is full; ``str()`` is ``No space left on device: <path>``.

    Also a ``RuntimeError``, because that is what ``torch.save`` raised for the same condition before, so callers
    catching either keep working.
    """

    def __init__(self, path: str | os.PathLike, code: int = errno.ENOSPC) -> None:
        super().__init__(code, os.strerror(code), str(path))

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


def _is_disk_full(err: BaseException) -> int | None:
    """The errno (ENOSPC/EDQUOT) if `err` or its causes is a full-disk failure, else None."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err.errno
        if isinstance(err, RuntimeError) and not isinstance(err, OSError):
            text = str(err)
            # torch.save's C++ writer on a short write: the errno is lost, the message is all that is left
            if "No space left on device" in text:
                return errno.ENOSPC
            if "unexpected pos" in text or "PytorchStreamWriter failed writing" in text:
                return errno.ENOSPC
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _naming_target(err: OSError, path: Path) -> OSError:
    """`err` about the target `path` when it names this write's temporary (or only the target's bare name, as a
    fail point does): the user sees which output could not be written (``Read-only file system: <path>``), not an
    internal ``.<name>.lavila-<pid>@<host>.<random>.tmp``. An error about another file is returned unchanged."""
    if err.errno is None or err.filename is None:
        return err
    named = Path(os.fsdecode(err.filename))
    is_temp = named.parent == path.parent and named.name.startswith(_temp_prefix(path))
    if not is_temp and str(named) != path.name:
        return err
    return OSError(err.errno, err.strerror, str(path))  # the errno's subclass: PermissionError, ...


def _temp_prefix(path: Path) -> str:
    host = re.sub(r"[^A-Za-z0-9_.\-]", "_", socket.gethostname() or "localhost")
    return f".{path.name}.lavila-{os.getpid()}@{host}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    try:  # a zombie (dead, not yet reaped) is dead
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _is_stale(path: Path, pid: str | None, host: str | None, max_age_s: float) -> bool:
    if pid is None:
        return True  # written by a version without owners: no process of this version writes it
    this_host = re.sub(r"[^A-Za-z0-9_.\-]", "_", socket.gethostname() or "localhost")
    if host == this_host:
        return not _pid_alive(int(pid))
    try:
        return time.time() - path.stat().st_mtime > max_age_s
    except FileNotFoundError:
        return False


def remove_stale_temps(folder: str | os.PathLike, pattern: str | Sequence[str] = "*", *,
                       max_age_s: float = OTHER_HOST_MAX_AGE_S) -> list[Path]:
    """Delete the temporaries that killed atomic writes of ``folder/<pattern>`` left; returns what was removed.

    `pattern` is a glob of target file names (or several); ``"*"`` suits a folder that only the job writes.

    Called by each long job at start for the files it writes (``checkpoint*.pt``, ``part-*.json``, the output
    file, ...), so kills during saves do not accumulate multi-GB leftovers. Only files named like this module's
    temporaries, of a target matching `pattern`, whose owner process is dead (same host) or that nothing touched
    for `max_age_s` (another host) are removed: a concurrent rank or job writing the same folder is unharmed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = (pattern,) if isinstance(pattern, str) else tuple(pattern)
    removed: list[Path] = []
    size = 0
    for path in sorted(folder.glob(".*.tmp")):
        m = _TEMP.match(path.name)
        if m is None or not any(fnmatchcase(m.group("target"), p) for p in patterns) or not path.is_file():
            continue
        if not _is_stale(path, m.group("pid"), m.group("host"), max_age_s):
            continue
        try:
            size += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    if removed:
        log.warning("removed %d temporary file(s) (%.1f MB) of interrupted writes in %s: %s", len(removed),
                    size / 1e6, folder, ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))
    return removed


def fsync_dir(folder: str | os.PathLike) -> None:
    """Persist a rename in ``folder`` (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as err:
        code = _is_disk_full(err)
        if code:
            raise DiskFullError(path, code) from err
        raise _naming_target(err, path) from err
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are shared like any other file the job writes
    try:
        yield tmp
        failpoint("atomic.tmp_written", path.name)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        failpoint("atomic.before_rename", path.name)
        os.replace(tmp, path)
        failpoint("atomic.after_rename", path.name)
        fsync_dir(path.parent)
    except Exception as err:
        code = _is_disk_full(err)
        if code:
            raise DiskFullError(path, code) from err
        if isinstance(err, OSError):
            raise _naming_target(err, path) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written ``path``."""
    import torch

    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # through a Python file, a full disk raises OSError(ENOSPC), not "unexpected pos"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Atomic write through a callback that receives the open binary file (``pickle.dump``, Parquet, ...)."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a snapshot of ``src``: a hard link when possible (instant, no extra disk), else a copy.

    ``src`` must only ever be replaced by rename (never rewritten in place), so a hard link keeps the old content.
    """
    with atomic_target(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
