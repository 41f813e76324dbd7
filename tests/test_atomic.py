"""Atomic writes: stale temporaries of killed writes are removed (only dead writers'), a full disk is named."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch

from lavila.atomic import DiskFullError, atomic_save, atomic_write_bytes, atomic_write_text, remove_stale_temps

HOST = socket.gethostname()


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _touch(folder, name: str, age_s: float = 0.0):
    path = folder / name
    path.write_bytes(b"partial")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_remove_stale_temps_removes_dead_writers_temps_only(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        stale = [
            _touch(tmp_path, f".checkpoint.pt.lavila-{dead}@{HOST}.abcdefgh.tmp"),  # killed on this host
            _touch(tmp_path, ".checkpoint_0003.pt.k3j4h5g6.tmp"),  # an older version's temporary: no live owner
            _touch(tmp_path, f".metrics.jsonl.lavila-{live.pid}@other-node.abcdefgh.tmp", age_s=7200),  # untouched 2 h
        ]
        kept = [
            _touch(tmp_path, f".checkpoint.pt.lavila-{live.pid}@{HOST}.zyxwvuts.tmp"),  # another process writing
            _touch(tmp_path, f".checkpoint.pt.lavila-{os.getpid()}@{HOST}.zyxwvuts.tmp"),  # this process writing
            _touch(tmp_path, f".checkpoint.pt.lavila-{dead}@other-node.abcdefgh.tmp"),  # recent, on another host
            _touch(tmp_path, f".notes.txt.lavila-{dead}@{HOST}.abcdefgh.tmp"),  # not a target of this job
            _touch(tmp_path, ".user-file.tmp"),  # not named like an atomic temporary
            _touch(tmp_path, "checkpoint.pt"),
        ]
        removed = remove_stale_temps(tmp_path, ("checkpoint*.pt", "metrics.jsonl"))
    finally:
        live.kill()
        live.wait()
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_a_write_killed_before_its_rename_leaves_the_old_file_and_a_temp_the_next_job_removes(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_save({"w": torch.zeros(3)}, target)
    code = ("import torch; from lavila.atomic import atomic_save; "
            f"atomic_save({{'w': torch.ones(3)}}, {str(target)!r})")
    env = {**os.environ, "LAVILA_FAILPOINTS": "atomic.before_rename@checkpoint.pt=1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 137, proc.stderr
    temps = list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    assert len(temps) == 1 and "lavila-" in temps[0].name  # the killed write's full-size temporary
    assert torch.equal(torch.load(target)["w"], torch.zeros(3))  # the previous file is intact
    assert remove_stale_temps(tmp_path, "checkpoint*.pt") == temps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def _torch_save_on_a_full_disk(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_disk_full_in_torch_save_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    atomic_save({"w": torch.zeros(3)}, target)
    monkeypatch.setattr(torch, "save", _torch_save_on_a_full_disk)
    with pytest.raises(DiskFullError) as info:
        atomic_save({"w": torch.ones(3)}, target)
    assert str(info.value) == f"No space left on device: {target}"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError) and isinstance(info.value,
                                                                                               RuntimeError)
    monkeypatch.undo()
    assert torch.equal(torch.load(target)["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_disk_full_of_any_atomic_write_is_one_clear_error(tmp_path):
    target = tmp_path / "metrics.jsonl"
    atomic_write_text(target, "old\n")

    def write(f):
        f.write(b"new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"^No space left on device: {re.escape(str(target))}$"):
        atomic_write_bytes(target, write)
    assert target.read_text() == "old\n" and len(list(tmp_path.iterdir())) == 1


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch):
    from lavila.train.state import write_checkpoint

    write_checkpoint({"epoch": 1}, tmp_path, is_best=True, numbered_epoch=1)
    monkeypatch.setattr(torch, "save", _torch_save_on_a_full_disk)
    # the snapshots are written first (a kill never loses them), so the first file that hits the full disk is one
    first_written = f"^No space left on device: {re.escape(str(tmp_path))}/checkpoint[_0-9a-z]*\\.pt$"
    with pytest.raises(OSError, match=first_written):
        write_checkpoint({"epoch": 2}, tmp_path, is_best=True, numbered_epoch=2)
    monkeypatch.undo()
    assert torch.load(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint_0001.pt", "checkpoint_best.pt"]


def test_disk_full_while_writing_a_search_index(tmp_path, monkeypatch):
    import safetensors.torch

    from lavila.eval.search import save_index

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "videos.index"  # a folder; its embeddings are the first file written
    # a RuntimeError as well, which `lavila index` already turns into one line
    with pytest.raises(RuntimeError, match=f"^No space left on device: {re.escape(str(out))}/embeddings"):
        save_index({"embeddings": torch.zeros(2, 4), "windows": [], "videos": []}, out)
    assert not list(tmp_path.iterdir())
