"""Fail points: named places in the write paths where a test can make the process die at an exact moment.

The pattern of etcd's gofail and FreeBSD's fail(9). Every atomic write, rename/link, part merge and manifest update
passes a named point (``failpoint("atomic.before_rename", "checkpoint.pt")``). Normally that is one test of a
module-level flag: zero cost when the environment variable is unset. With it set, a process can be killed
*between* two writes — the only way to prove that a rerun after a kill at any point loses no work, duplicates
nothing and leaves no temporary files (the kill tests in ``tests/*/test_*kill*.py`` do exactly that).

``LAVILA_FAILPOINTS`` holds terms separated by ``,`` or ``;``::

    POINT[@DETAIL]=N[:ACTION]

* ``POINT`` is a point name (list in ``docs/reliability.md``), ``DETAIL`` an optional glob matched against the
  point's detail (the file name being written, the video, ...): ``atomic.before_rename@checkpoint_best.pt=1``;
* ``N`` (>= 1): act at the N-th pass of a matching point, counted per process and per term;
* ``ACTION``: ``exit`` (default: ``os._exit(137)``, the status a shell reports for a SIGKILLed job — no cleanup,
  no ``finally``, no flush, like a real kill), ``exit(CODE)``, ``kill`` (``SIGKILL`` to itself),
  ``sleep(SECONDS)`` (then go on: lets a test find the process mid-work and kill it from outside) or
  ``oserror(ERRNO)`` (raise ``OSError(ERRNO, os.strerror(ERRNO), DETAIL)`` there, as the failing system call
  would: ``atomic.tmp_written=1:oserror(30)`` is a read-only file system, ``oserror(28)`` a full disk — how the
  tests prove that such failures reach the user as one line, not a traceback).

``LAVILA_FAILPOINTS_TRACE=FILE`` appends one line ``pid<TAB>point<TAB>detail`` per pass (whether or not a term
matches): how a test learns which points a job passes, in which order, and the pids of worker processes.

The variables are read at import (child processes inherit them); :func:`reload` re-reads them in-process.
"""

from __future__ import annotations

import fnmatch
import os
import re
import signal
import sys
import time
from dataclasses import dataclass

ENV = "LAVILA_FAILPOINTS"
TRACE_ENV = "LAVILA_FAILPOINTS_TRACE"
EXIT_CODE = 137  # 128 + SIGKILL

_TERM = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(?:@(?P<detail>[^=]+))?=(?P<n>\d+)(?::(?P<action>.+))?$")
_ACTION = re.compile(r"^(?P<kind>exit|kill|sleep|oserror)(?:\((?P<arg>[0-9.]+)\))?$")


@dataclass
class _Term:
    name: str
    detail: str | None
    n: int
    action: str
    arg: float | None
    passes: int = 0


def parse(spec: str) -> list[_Term]:
    """Terms of a ``LAVILA_FAILPOINTS`` value; a malformed term raises ``ValueError`` naming it."""
    terms = []
    for raw in re.split(r"[,;]", spec or ""):
        raw = raw.strip()
        if not raw:
            continue
        m = _TERM.match(raw)
        action = _ACTION.match((m.group("action") or "exit").strip()) if m else None
        if m is None or action is None or int(m.group("n")) < 1:
            raise ValueError(f"{ENV}: cannot parse {raw!r} (expected POINT[@DETAIL]=N[:exit|exit(CODE)|kill|"
                             "sleep(SECONDS)|oserror(ERRNO)], N >= 1)")
        arg = action.group("arg")
        if action.group("kind") == "sleep" and arg is None:
            raise ValueError(f"{ENV}: {raw!r}: sleep needs a duration, e.g. sleep(30)")
        if action.group("kind") == "oserror" and (arg is None or not arg.isdigit() or int(arg) < 1):
            raise ValueError(f"{ENV}: {raw!r}: oserror needs an errno, e.g. oserror(28) for a full disk")
        terms.append(_Term(m.group("name"), m.group("detail"), int(m.group("n")), action.group("kind"),
                           float(arg) if arg is not None else None))
    return terms


_terms: list[_Term] = []
_trace: str | None = None
_ACTIVE = False


def reload() -> None:
    """Re-read the environment variables (for in-process tests; subprocesses read them at import)."""
    global _terms, _trace, _ACTIVE
    _terms = parse(os.environ.get(ENV, ""))
    _trace = os.environ.get(TRACE_ENV) or None
    _ACTIVE = bool(_terms or _trace)


def failpoint(name: str, detail: str = "") -> None:
    """A named point; does nothing (one flag test) unless ``LAVILA_FAILPOINTS``/``..._TRACE`` are set."""
    if _ACTIVE:
        _hit(name, str(detail))


def _hit(name: str, detail: str) -> None:
    if _trace:
        line = f"{os.getpid()}\t{name}\t{detail}\n".encode()
        fd = os.open(_trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of a short line with O_APPEND: lines of several processes never mix
        finally:
            os.close(fd)
    for term in _terms:
        if term.name != name or (term.detail is not None and not fnmatch.fnmatchcase(detail, term.detail)):
            continue
        term.passes += 1
        if term.passes != term.n:
            continue
        if term.action == "sleep":
            time.sleep(term.arg or 0.0)
            continue
        print(f"failpoint {name}" + (f" ({detail})" if detail else "") + f": {term.action} at pass {term.n}",
              file=sys.stderr, flush=True)
        if term.action == "oserror":
            code = int(term.arg or 0)
            raise OSError(code, os.strerror(code), detail or name)  # the errno's subclass: PermissionError, ...
        if term.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(int(term.arg) if term.arg is not None else EXIT_CODE)


reload()

__all__ = ["ENV", "EXIT_CODE", "TRACE_ENV", "failpoint", "parse", "reload"]
