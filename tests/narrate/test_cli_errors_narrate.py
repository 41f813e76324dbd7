"""Expected failures of `lavila narrate --metadata` and `lavila rephrase` reach the user as one line, no traceback
(issue 9.12; the other verbs: tests/test_cli_errors.py): a read-only file system and a full disk at the first atomic
write (``oserror(ERRNO)`` fail points: the ``OSError`` the failing system call raises), an output folder that is a
file, and an output folder that holds another job's parts (``ShardError``).
"""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from tests.failpoint_helpers import one_line_error, read_trace, run_cli

DISK_ERRORS = [pytest.param(errno.EROFS, id="read-only"), pytest.param(errno.ENOSPC, id="full-disk")]
FIRST_WRITE = "atomic.tmp_written"
CLIP = ("3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014", 0.0, 1.0)
ROWS = [("v", 0.0, 1.0, "#C C cuts the bread"), ("v", 1.0, 2.0, "#C C stirs the pot")]


def assert_names_the_error(line: str, code: int, folder, trace) -> None:
    assert f"{os.strerror(code)}: " in line, line
    name = next(detail for _, point, detail in read_trace(trace) if point == FIRST_WRITE)
    assert name and name in line and str(folder) in line, (name, line)


# ----------------------------------------------------------------------------------------------------- narrate
@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    path = tmp_path_factory.mktemp("meta") / "clips.pkl"
    path.write_bytes(pickle.dumps([(*CLIP, "#C C does something")]))
    return path


def narrate_args(metadata, media_dir, checkpoint, out, max_len: int = 8) -> list[str]:
    return ["narrate", "--metadata", metadata, "--checkpoint", checkpoint, "--output-dir", out, "--video-root",
            media_dir, "--chunk-len", "-1", "--fps", "-1", "--num-workers", "0", "--batch-size", "1",
            "--num-return-sequences", "2", "--max-len", str(max_len), "--device", "cpu"]


@pytest.mark.parametrize("code", DISK_ERRORS)
def test_narrate_disk_errors_are_one_line(metadata, media_dir, tiny_checkpoint, tmp_path, code):
    out = tmp_path / "out"
    proc = run_cli(narrate_args(metadata, media_dir, tiny_checkpoint, out),
                   failpoints=f"{FIRST_WRITE}=1:oserror({code})", trace=tmp_path / "trace")
    assert_names_the_error(one_line_error(proc, "narrate"), code, out, tmp_path / "trace")


def test_narrate_output_dir_that_is_a_file_is_one_line(metadata, media_dir, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    line = one_line_error(run_cli(narrate_args(metadata, media_dir, tiny_checkpoint, out)), "narrate", codes=(1, 2))
    assert str(out) in line, line
    assert out.read_text() == "not a folder"


def test_narrate_into_another_jobs_folder_is_one_shard_error_line(metadata, media_dir, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    first = run_cli(narrate_args(metadata, media_dir, tiny_checkpoint, out))
    assert first.returncode == 0, first.stderr[-3000:]
    proc = run_cli(narrate_args(metadata, media_dir, tiny_checkpoint, out, max_len=9))  # other decoding settings
    line = one_line_error(proc, "narrate", codes=(1,))
    assert f"{out} holds results of a different job" in line and "--overwrite" in line, line
    assert "another --output-dir" in line, line


# ---------------------------------------------------------------------------------------------------- rephrase
@pytest.fixture(scope="module")
def human(tmp_path_factory):
    path = tmp_path_factory.mktemp("human") / "h_train.pkl"
    path.write_bytes(pickle.dumps(ROWS))
    return path


def rephrase_args(meta, out, t5, seed: int = 3) -> list[str]:
    return ["rephrase", "--metadata", meta, "--output", out, "--model", t5, "--batch-size", "2", "--part-size", "2",
            "--device", "cpu", "--max-new-tokens", "6", "--seed", str(seed)]


@pytest.mark.parametrize("code", DISK_ERRORS)
def test_rephrase_disk_errors_are_one_line(human, tiny_t5, tmp_path, code):
    out = tmp_path / "h_train.rephraser.pkl"
    proc = run_cli(rephrase_args(human, out, tiny_t5), failpoints=f"{FIRST_WRITE}=1:oserror({code})",
                   trace=tmp_path / "trace")
    assert_names_the_error(one_line_error(proc, "rephrase"), code, tmp_path, tmp_path / "trace")


def test_rephrase_into_another_jobs_parts_is_one_shard_error_line(human, tiny_t5, tmp_path):
    out = tmp_path / "h_train.rephraser.pkl"
    first = run_cli(rephrase_args(human, out, tiny_t5))
    assert first.returncode == 0, first.stderr[-3000:]
    line = one_line_error(run_cli(rephrase_args(human, out, tiny_t5, seed=4)), "rephrase", codes=(1,))  # as narrate
    assert "holds results of a different job" in line and "--overwrite" in line, line
    assert "another --output," in line and "--output-dir" not in line, line  # rephrase's own flag
