"""Every verb that owns an output folder refuses to start while another live job holds it (one line, its pid),
before writing anything there; and ``lavila VERB | head`` ends quietly when the reader goes away."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lavila.locks import LOCK_NAME
from tests.failpoint_helpers import cli_command, cli_env, run_cli
from tests.test_locks import end, hold


def _verbs(tmp_path):
    """(verb arguments, the folder it locks) for each job that owns an output folder."""
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"never loaded: the job is refused first")
    meta = tmp_path / "meta.pkl"
    meta.write_bytes(b"never read either")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"x")
    out = tmp_path / "out"
    return {
        "demo": (["demo", "--output-dir", out], out),
        "narrate": (["narrate", "--metadata", meta, "--checkpoint", ckpt, "--output-dir", out], out),
        "narrate-videos": (["narrate", videos / "clip.mp4", "--checkpoint", ckpt, "--output-dir", out], out),
        "rephrase": (["rephrase", "--metadata", meta, "--output", out / "meta.rephrased.pkl"],
                     out / "meta.rephrased.pkl.parts"),
        "index": (["index", videos, "--checkpoint", ckpt, "--out", out], out),
        "prepare-ego4d": (["prepare-ego4d", videos, out, "--no-progress"], out),
    }


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["demo", "narrate", "narrate-videos", "rephrase", "index", "prepare-ego4d"])
def test_a_job_in_a_folder_another_job_holds_is_refused_naming_its_pid(tmp_path, verb):
    args, folder = _verbs(tmp_path)[verb]
    holder = hold(folder)
    try:
        proc = run_cli(args)
        files = sorted(p.name for p in folder.iterdir())
    finally:
        end(holder)
    name = args[0]
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"lavila {name}: error: {folder} is in use by test holder (pid {holder.pid} on ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert files == [LOCK_NAME]  # nothing written beside the holder's lock file


@pytest.mark.parametrize("args", [["models"], ["train", "-", "--dry-run"], ["narrate", "--help"]])
def test_output_to_a_closed_pipe_ends_quietly(args):
    read, write = os.pipe()
    os.close(read)  # `| head` that has already gone: every write fails with EPIPE
    try:
        proc = subprocess.run(cli_command(args), stdout=write, stderr=subprocess.PIPE, text=True, env=cli_env(),
                              timeout=120, check=False)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), proc.returncode


def test_head_reads_one_line_of_a_long_listing():
    proc = subprocess.run(f"{sys.executable} -m lavila.cli train - --list-keys | head -1", shell=True,
                          capture_output=True, text=True, env=cli_env(), timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    assert proc.stderr == "", proc.stderr
