"""Expected failures reach the user as one line, never a traceback (issue 9.12): `lavila train`, `index` and
`prepare-ego4d` in real subprocesses on a read-only file system, a full disk, an output "folder" that is a file and
(train) too many undecodable videos. The disk failures are ``oserror(ERRNO)`` fail points at the first atomic write:
the same ``OSError`` the failing system call raises there (a test run as root cannot make a folder read-only).
``--debug`` / ``LAVILA_DEBUG=1`` still shows the traceback. `narrate` and `rephrase`: tests/narrate/test_cli_errors*.

Each line must name what failed (the errno's text, computed here with ``os.strerror``) and the file (the detail the
trace recorded at the pass where the fail point fired, under the output folder the test chose).
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from lavila.data.prepare import write_synthetic_video
from tests.conftest import reference_file
from tests.failpoint_helpers import one_line_error, read_trace, run_cli
from tests.train.helpers import EGO4D_CLIP, TINY_MODEL, tiny_values, write_yaml

DISK_ERRORS = [pytest.param(errno.EROFS, id="read-only"), pytest.param(errno.ENOSPC, id="full-disk")]
FIRST_WRITE = "atomic.tmp_written"


def first_write(trace) -> str:
    """The file of the first atomic write, where ``atomic.tmp_written=1`` fired."""
    return next(detail for _, name, detail in read_trace(trace) if name == FIRST_WRITE)


def assert_names_the_error(line: str, code: int, folder, trace) -> None:
    assert f"{os.strerror(code)}: " in line, line
    name = first_write(trace)
    assert name and name in line and str(folder) in line, (name, line)  # the whole path of the file, not a temp


# ------------------------------------------------------------------------------------------------------- train
def train_config(folder, **overrides):
    values = tiny_values(folder / "out", epochs=1, synthetic_train_size=4, synthetic_eval_groups=0)
    values.update(overrides)
    return write_yaml(folder / "config.yaml", values), folder / "out"


@pytest.mark.parametrize("code", DISK_ERRORS)
def test_train_disk_errors_are_one_line(tmp_path, code):
    config, out = train_config(tmp_path)
    proc = run_cli(["train", config], failpoints=f"{FIRST_WRITE}=1:oserror({code})", trace=tmp_path / "trace")
    assert_names_the_error(one_line_error(proc, "train"), code, out, tmp_path / "trace")


def test_debug_shows_the_traceback_of_an_expected_error(tmp_path):
    config, _ = train_config(tmp_path)
    proc = run_cli(["train", config], failpoints=f"{FIRST_WRITE}=1:oserror({errno.EROFS})",
                   env={"LAVILA_DEBUG": "1"})
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("OSError: ") and os.strerror(errno.EROFS) in last, last


def test_train_output_dir_that_is_a_file_is_one_line(tmp_path):
    config, out = train_config(tmp_path)
    out.write_text("not a folder")
    line = one_line_error(run_cli(["train", config]), "train", codes=(1, 2))
    assert str(out) in line, line
    assert out.read_text() == "not a folder"  # untouched


def test_train_decode_failure_abort_is_one_line(tmp_path, media_dir):
    """One of 8 samples' video is missing (threshold 5%): the epoch-end check stops the run, workers and all."""
    from lavila.data.metadata import save_metadata

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(media_dir / EGO4D_CLIP, videos / "clip.mp4")
    rows = [("clip", 0.1 * i, 0.1 * i + 0.9, "#C C stirs the pan") for i in range(7)]
    rows.insert(3, ("gone", 0.0, 1.0, "#C C is not here"))
    save_metadata(rows, tmp_path / "ego4d_train.missing.pkl")
    config, _ = train_config(tmp_path, dataset="ego4d", root=str(videos),
                             metadata=str(tmp_path / "ego4d_train.missing.pkl"), video_chunk_len=-1, video_fps=-1,
                             batch_size=4, workers=2,
                             model_overrides=dict(TINY_MODEL, text_vocab_size=49408, text_context_length=77))
    bpe = reference_file("bpe_simple_vocab_16e6.txt.gz")
    line = one_line_error(run_cli(["train", config], env={"LAVILA_BPE_PATH": str(bpe)}), "train")
    assert "failed to decode" in line and str(videos / "gone.mp4") in line, line


# ------------------------------------------------------------------------------------------------------- index
@pytest.mark.parametrize("code", DISK_ERRORS)
def test_index_disk_errors_are_one_line(tmp_path, tiny_checkpoint, code):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_synthetic_video(videos / "a.mp4", 15, fps=10, height=48, width=64, gop=10)
    out = tmp_path / "videos.index"
    proc = run_cli(["index", videos, "--checkpoint", tiny_checkpoint, "--out", out, "--workers", "0",
                    "--batch-size", "2", "--device", "cpu"],
                   failpoints=f"{FIRST_WRITE}=1:oserror({code})", trace=tmp_path / "trace")
    assert_names_the_error(one_line_error(proc, "index"), code, out, tmp_path / "trace")


# ----------------------------------------------------------------------------------------------- prepare-ego4d
@pytest.mark.parametrize("code, workers", [pytest.param(errno.EROFS, 1, id="read-only"),
                                           pytest.param(errno.ENOSPC, 2, id="full-disk-in-a-worker")])
def test_prepare_disk_errors_stop_the_job_with_one_line(tmp_path, code, workers):
    """Not "every video failed" one by one: a destination that refuses writes stops the job at its first write."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        write_synthetic_video(src / f"{name}.mp4", 30, fps=30, height=32, width=48, gop=15)
    dst = tmp_path / "dst"
    proc = run_cli(["prepare-ego4d", src, dst, "--chunk-len", "1", "--short-side", "32", "--workers", workers,
                    "--preset", "ultrafast", "--no-progress"],
                   failpoints=f"{FIRST_WRITE}=1:oserror({code})", trace=tmp_path / "trace")
    assert_names_the_error(one_line_error(proc, "prepare-ego4d"), code, dst, tmp_path / "trace")
    assert "FAILED" not in proc.stderr
    if workers == 1:  # stopped at the first video's write: the second one was never started
        assert [d for _, name, d in read_trace(tmp_path / "trace") if name == "prepare.video_start"] == ["a.mp4"]
