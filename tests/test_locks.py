"""One job per output folder (lavila.locks): a live holder refuses others by pid; a dead one's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from lavila.locks import LOCK_NAME, FolderLockedError, lock_path, output_lock
from tests.failpoint_helpers import pid_alive, wait_until

HOLDER = textwrap.dedent("""
    import os, sys, time
    from lavila.locks import output_lock
    with output_lock(sys.argv[1], "test holder", rank=int(sys.argv[2])):
        if sys.argv[3] == "fork":  # a child that outlives the holder, as DataLoader/encoder workers do
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        print("locked", flush=True)
        time.sleep(60)
""")


def hold(folder, rank: int = 0, fork: bool = False) -> subprocess.Popen:
    """A process holding `folder`'s lock (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(rank), "fork" if fork else "-"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def end(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_second_job_is_refused_with_the_holders_pid(tmp_path):
    holder = hold(tmp_path / "out")
    try:
        with pytest.raises(FolderLockedError) as err, output_lock(tmp_path / "out", "lavila train"):
            pytest.fail("the lock of a live process was taken")
        message = str(err.value)
        assert f"pid {holder.pid}" in message and "test holder" in message and str(tmp_path / "out") in message
        assert "\n" not in message
        assert err.value.holder["pid"] == holder.pid
        with output_lock(tmp_path / "out", "rank 1 of another job", rank=1):  # other ranks have their own file
            pass
    finally:
        end(holder)


def test_the_lock_of_a_killed_process_is_taken_over_even_while_its_forked_children_live(tmp_path):
    holder = hold(tmp_path / "out", fork=True)
    try:
        os.kill(holder.pid, signal.SIGKILL)  # the holder only: its forked child keeps the lock file open
        holder.wait(timeout=30)
        stale = json.loads(lock_path(tmp_path / "out").read_text())
        assert stale["pid"] == holder.pid  # the dead job's file is still there
        with output_lock(tmp_path / "out", "rerun") as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
        assert not path.exists()  # a clean release removes the file
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the child


def test_a_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    assert not pid_alive(dead)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": "h", "job": "old"}))
    with output_lock(tmp_path, "new job") as path:
        assert json.loads(path.read_text())["job"] == "new job"


def test_the_lock_is_reentrant_in_one_process_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new" / "folder"
    with output_lock(out, "lavila demo") as outer:
        with output_lock(out, "lavila train") as inner:  # the demo runs the trainer in its own folder
            assert inner == outer and json.loads(inner.read_text())["job"] == "lavila demo"
        assert outer.exists()  # still held by the outer block
    assert not out.exists()  # created by the lock, left empty: removed again
    with pytest.raises(RuntimeError), output_lock(out, "failing job"):
        raise RuntimeError("the job failed before writing anything")
    assert not out.exists()
    with output_lock(out, "job"):
        (out / "result.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]


def test_a_refused_job_leaves_no_folder_and_a_file_is_no_folder(tmp_path):
    holder = hold(tmp_path / "out")
    try:
        wait_until(lambda: lock_path(tmp_path / "out").read_text().strip(), 10)
        with pytest.raises(FolderLockedError), output_lock(tmp_path / "out", "second"):
            pass
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_NAME]  # the holder's file, untouched
    finally:
        end(holder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"), output_lock(tmp_path / "file", "job"):
        pass
