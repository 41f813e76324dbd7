"""One job per output folder: a lock file that a second job finds taken, and that dies with its holder.

Two jobs writing the same folder corrupt each other quietly: the second resumes the first's checkpoint, re-plans
its schedule, overwrites its checkpoints and plots and truncates its ``metrics.jsonl``. Every job that owns an
output folder therefore holds :func:`output_lock` for as long as it writes there::

    with output_lock(cfg.output_dir, "lavila train"):
        ...

* **Refusal.** A second job is refused at once with :class:`FolderLockedError`, one line naming the holder:
  ``<folder> is in use by lavila train (pid 1234 on host, since 2025-01-01 10:00:00) ...``.
* **Stale locks cost nothing.** The lock is a POSIX record lock (``fcntl.lockf``) on ``<folder>/.lavila.lock``.
  The kernel drops it when the holder dies, however it dies (SIGKILL, OOM killer, power loss of an NFS client
  after the lease), so a job that finds the lock file of a dead process simply takes it. The file's content
  (pid, host, job, start time, as JSON) only serves the refusal message. POSIX locks rather than ``flock``: they
  belong to the process, not to the open file, so DataLoader or encoder workers forked by a killed job (which live
  on for seconds) do not keep the folder locked against the rerun.
* **Clean exits leave nothing.** The file is removed on release (while still locked; a job that opened the old
  file before the removal notices that it locked an unlinked file and retries), and a folder the lock itself
  created is removed again when it is still empty (a job refused by a bad argument leaves no empty folder).
* **Ranks.** ``rank`` > 0 locks ``.lavila.rank<r>.lock`` instead, for jobs whose ranks are independent processes
  that write the same folder by design (narrate's part files); a job run under one process group locks on its
  main rank only.
* **Re-entrant in a process.** ``lavila demo`` holds its folder and then runs the trainer there: a nested
  :func:`output_lock` of a folder this process already holds just counts.
* **Filesystems without locks** (some network filesystems return ``ENOLCK``/``EOPNOTSUPP``): one warning, and
  the job runs unlocked, as it did before locks existed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from lavila.errors import LavilaError

log = logging.getLogger(__name__)

LOCK_NAME = ".lavila.lock"


class FolderLockedError(LavilaError):
    """Another live job holds the folder's lock; ``holder`` is what it wrote in the lock file (may be empty)."""

    def __init__(self, message: str, *, folder: Path, holder: dict) -> None:
        super().__init__(message)
        self.folder, self.holder = folder, holder


def lock_path(folder: str | os.PathLike, rank: int = 0) -> Path:
    """The lock file of `folder` for `rank` (rank 0: ``.lavila.lock``)."""
    return Path(folder) / (LOCK_NAME if rank == 0 else f".lavila.rank{rank}.lock")


# lock file -> pid of the holder: the locks this process holds (re-entrancy; a forked child holds none of them)
_held: dict[str, int] = {}
_registry = threading.Lock()


def _read_holder(fd: int) -> dict:
    for _ in range(10):  # the holder writes its line right after locking: give it a moment
        try:
            raw = os.pread(fd, 4096, 0)
        except OSError:
            return {}
        if raw.strip():
            try:
                data = json.loads(raw)
                return data if isinstance(data, dict) else {}
            except ValueError:
                pass
        time.sleep(0.02)
    return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another job (its pid is not recorded yet)"
    since = holder.get("started")
    since_text = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) \
        else ""
    job, pid, host = holder.get("job") or "another job", holder.get("pid", "?"), holder.get("host", "?")
    return f"{job} (pid {pid} on {host}{since_text})"


def _acquire(path: Path, job_name: str) -> int | None:
    """Lock `path` (created if needed); the open fd, or None where the filesystem has no locks."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                holder = _read_holder(fd)
                os.close(fd)
                folder = path.parent
                raise FolderLockedError(
                    f"{folder} is in use by {_describe(holder)}; wait for it to finish, or give this job another "
                    f"output folder (a lock of a process that died is taken over automatically)",
                    folder=folder, holder=holder) from None
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                log.warning("%s: this filesystem does not support file locks (%s); running without the lock that "
                            "keeps a second job out of this folder", path.parent, err.strerror)
                return None
            raise
        try:  # the holder we waited for may have removed the file after we opened it: lock the current one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "job": job_name, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return fd


def _release(path: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # while still locked: see _acquire
    os.close(fd)  # drops the POSIX lock


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, job_name: str, *, rank: int = 0) -> Iterator[Path]:
    """Hold `folder`'s lock (creating the folder) while the block runs; yields the lock file's path.

    Raises :class:`FolderLockedError` (a one-line ``LavilaError``) when another live process holds it.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LavilaError(f"{folder} is a file, not a folder; give an output folder") from None
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise LavilaError(f"cannot create the output folder {folder}: {err.strerror}") from None
        raise
    path = lock_path(folder, rank)
    key = os.path.realpath(path)
    with _registry:
        nested = _held.get(key) == os.getpid()
    if nested:
        yield path
        return
    try:
        fd = _acquire(path, job_name)
    except BaseException as err:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise LavilaError(f"cannot write to the output folder {folder}: {err.strerror}") from None
        raise
    with _registry:
        _held[key] = os.getpid()
    try:
        yield path
    finally:
        with _registry:
            _held.pop(key, None)
        _release(path, fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the job wrote something, keep it
                folder.rmdir()


__all__ = ["LOCK_NAME", "FolderLockedError", "lock_path", "output_lock"]
