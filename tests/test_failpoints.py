"""The fail-point mechanism itself: syntax, n-th pass, detail globs, actions, trace, and nothing when unset."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lavila import failpoints
from lavila.failpoints import EXIT_CODE, parse

SCRIPT = """
import sys
from lavila.failpoints import failpoint
for i in range(5):
    failpoint("demo.step", f"item{i}.json")
    print(i, flush=True)
"""


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LAVILA_FAILPOINTS")}
    return subprocess.run([sys.executable, "-c", SCRIPT], env={**base, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_exit_at_the_nth_pass_without_cleanup():
    proc = _run({"LAVILA_FAILPOINTS": "demo.step=3"})
    assert proc.returncode == EXIT_CODE == 137
    assert proc.stdout.split() == ["0", "1"]  # died at the 3rd pass, before printing 2
    assert "failpoint demo.step (item2.json): exit at pass 3" in proc.stderr


def test_detail_glob_counts_only_matching_passes_and_other_actions():
    assert _run({"LAVILA_FAILPOINTS": "demo.step@item4.json=1"}).stdout.split() == ["0", "1", "2", "3"]
    assert _run({"LAVILA_FAILPOINTS": "demo.step@item[13].json=2:exit(9)"}).returncode == 9  # item1, item3
    assert _run({"LAVILA_FAILPOINTS": "demo.step=2:kill"}).returncode == -9  # a real SIGKILL
    assert _run({"LAVILA_FAILPOINTS": "other.point=1"}).returncode == 0
    start = time.perf_counter()
    slept = _run({"LAVILA_FAILPOINTS": "demo.step=1:sleep(0.5)"})
    assert slept.returncode == 0 and slept.stdout.split() == ["0", "1", "2", "3", "4"]
    assert time.perf_counter() - start >= 0.5


def test_trace_records_every_pass_with_pid_and_detail(tmp_path):
    trace = tmp_path / "trace"
    proc = _run({"LAVILA_FAILPOINTS_TRACE": str(trace)})
    assert proc.returncode == 0
    lines = [line.split("\t") for line in trace.read_text().splitlines()]
    assert [(n, d) for _, n, d in lines] == [("demo.step", f"item{i}.json") for i in range(5)]
    assert len({pid for pid, _, _ in lines}) == 1


@pytest.mark.parametrize("bad", ["demo.step", "demo.step=0", "demo.step=x", "demo.step=1:explode",
                                 "demo.step=1:sleep", "demo.step=1:oserror", "demo.step=1:oserror(0)",
                                 "demo.step=1:oserror(2.5)"])
def test_malformed_terms_are_refused_with_the_term(bad):
    with pytest.raises(ValueError, match="LAVILA_FAILPOINTS"):
        parse(bad)


def test_unset_means_inactive(monkeypatch):
    monkeypatch.delenv("LAVILA_FAILPOINTS", raising=False)
    monkeypatch.delenv("LAVILA_FAILPOINTS_TRACE", raising=False)
    failpoints.reload()
    assert failpoints._ACTIVE is False
    failpoints.failpoint("anything")  # a no-op
    monkeypatch.setenv("LAVILA_FAILPOINTS", "x.y=2,a.b@c=1:sleep(0)")
    failpoints.reload()
    try:
        assert failpoints._ACTIVE is True and [t.name for t in failpoints._terms] == ["x.y", "a.b"]
        failpoints.failpoint("x.y")  # first pass of an n=2 term: nothing happens
    finally:
        monkeypatch.delenv("LAVILA_FAILPOINTS")
        failpoints.reload()


def test_oserror_raises_the_errno_at_the_nth_pass_with_the_detail_as_file(monkeypatch):
    """``oserror(ERRNO)``: the OSError the failing system call would raise there, so the caller's handling runs."""
    import errno

    (term,) = parse("demo.step@*.json=2:oserror(30)")
    assert (term.action, term.arg, term.n) == ("oserror", 30, 2)
    monkeypatch.setenv("LAVILA_FAILPOINTS", "demo.step@*.json=2:oserror(30),other.step=1:oserror(13)")
    failpoints.reload()
    try:
        failpoints.failpoint("demo.step", "a.json")  # first pass: nothing
        failpoints.failpoint("demo.step", "b.txt")  # does not match the glob: not counted
        with pytest.raises(OSError) as raised:
            failpoints.failpoint("demo.step", "c.json")
        assert (raised.value.errno, raised.value.strerror, raised.value.filename) == (
            errno.EROFS, os.strerror(errno.EROFS), "c.json")
        failpoints.failpoint("demo.step", "d.json")  # only the n-th pass acts
        with pytest.raises(PermissionError):  # the errno's own subclass, as from a real call
            failpoints.failpoint("other.step")
    finally:
        monkeypatch.delenv("LAVILA_FAILPOINTS")
        failpoints.reload()
