"""Expected failures: errors a user can fix, reported by ``lavila`` as one line instead of a traceback.

Every verb raises a :class:`LavilaError` (or a subclass) for a problem that is the user's input, data or
environment rather than a bug: a missing file, a bad flag, a checkpoint of the wrong kind. ``lavila.cli.main``
prints ``lavila VERB: error: <message>`` and exits with :attr:`LavilaError.exit_code`; an ``OSError`` (a read-only
file system, a full disk) is printed the same way as ``<strerror>: <file>``, exit 1; anything else is a bug and
keeps its traceback. ``--debug`` (or ``LAVILA_DEBUG=1``) shows the traceback of expected failures too.

Every subclass (``MetadataError``, ``AnnotationError``, ``TokenizerError``, ``ShardError``, ...) also derives from
:class:`ValueError`, so library callers that already catch ``ValueError`` for bad input keep working.
"""

from __future__ import annotations


class LavilaError(ValueError):
    """A failure the user can act on; the message says what and, where useful, how to fix it."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(LavilaError):
    """A usage or configuration problem; the message names the offending key or flag and where it came from."""

    exit_code = 2


class JobInterrupted(RuntimeError):
    """A stop signal ended a job after it saved its state; rerunning the same command resumes it.

    ``lavila.cli.main`` prints the message as one line and exits ``128 + signum`` (130 for SIGINT, 143 for SIGTERM),
    for every verb, also one that runs another verb's job in-process (``lavila demo`` training its models).
    """

    def __init__(self, message: str, signum: int = 0) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 1


__all__ = ["ConfigError", "JobInterrupted", "LavilaError"]
