"""`lavila narrate DIR_OR_FILES...` over a video library (issue 13 items 1, 2, 6): the folder tree and its outputs,
windows batched across videos, per-video resume, sharding by video, progress, failures, dual-encoder selection,
wrong-kind and random-weight checkpoints."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from lavila.narrate import library as lib
from lavila.narrate import narrate as nar

EGO = "3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014.mp4"  # 2 s at 30 fps: windows 0, 1 at --every 1s
PASTRY = "mixkit-pastry-chef-cutting-a-loaf-into-slices-43015-medium.mp4"  # 4 s: windows 0, 1, 2, 3
KNEAD = "mixkit-hands-of-a-baker-kneading-a-dough-42467-medium.mp4"  # 5 s


@pytest.fixture
def library(media_dir, tmp_path) -> Path:
    """videos/ with two clips at the top, one in a subfolder and a text file posing as a video."""
    root = tmp_path / "videos"
    (root / "kitchen").mkdir(parents=True)
    (root / "ego.mp4").symlink_to(media_dir / EGO)
    (root / "kitchen" / "pastry.mp4").symlink_to(media_dir / PASTRY)
    (root / "broken.mp4").symlink_to(media_dir / "not_a_video.mp4")
    (root / "notes.txt").write_text("not a video extension: not part of the library")
    return root


def _args(inputs, checkpoint, out, *extra) -> list[str]:
    return ["narrate", *map(str, inputs), "--checkpoint", str(checkpoint), "--output-dir", str(out), "--every", "1s",
            "--num-return-sequences", "2", "--max-len", "6", "--device", "cpu", "--num-workers", "0",
            "--batch-size", "4", *extra]


def _texts(out: Path, video_id: str) -> list[list[str]]:
    doc = json.loads((out / f"{video_id}.json").read_text())
    return [[c["text"] for c in w["captions"]] for w in doc["windows"]]


def _job(inputs, checkpoint, out, **kw) -> nar.NarrateJob:
    from lavila.narrate.generate import GenerationConfig

    settings = dict(every="1s", generation=GenerationConfig(num_return_sequences=2, max_len=6), device="cpu",
                    num_workers=0, batch_size=4)
    settings.update(kw)
    return nar.NarrateJob(checkpoint=str(checkpoint), videos=[str(i) for i in inputs], output_dir=str(out),
                          **settings)


# ------------------------------------------------------------------------------------------------ library outputs
def test_a_folder_tree_gets_every_output_and_a_failure_summary(library, tiny_checkpoint, tmp_path, capsys,
                                                               caplog) -> None:
    from lavila.cli import main

    out = tmp_path / "out"
    code = main(_args([library], tiny_checkpoint, out, "--subject", "camera-wearer"))
    captured = capsys.readouterr()
    assert code == 1  # broken.mp4 cannot be opened
    assert "has random weights (a test model)" in caplog.text  # the tiny narrator says it is one
    assert "1 of 3 videos failed" in captured.err and "broken.mp4" in captured.err
    # outputs mirror the tree; ids are paths relative to the folder, without the extension
    for vid in ("ego", "kitchen/pastry"):
        for ext in (".json", ".srt", ".txt"):
            assert (out / f"{vid}{ext}").is_file(), f"{vid}{ext}"
    assert not (out / "broken.json").exists() and not (out / "notes.json").exists()
    doc = json.loads((out / "kitchen/pastry.json").read_text())
    assert doc["video_id"] == "kitchen/pastry" and (doc["window"], doc["stride"]) == (1.0, 1.0)
    assert [(w["start"], w["end"]) for w in doc["windows"]] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    assert all(len(w["captions"]) == 2 and isinstance(w["caption"], str) for w in doc["windows"])
    # the one-file export: {video_id: [{start, end, caption, candidates, score}]}
    export = json.loads((out / "captions.json").read_text())
    assert sorted(export) == ["ego", "kitchen/pastry"]
    seg = export["kitchen/pastry"][0]
    assert set(seg) == {"start", "end", "caption", "candidates", "score"} and len(seg["candidates"]) == 2
    assert [s["caption"] for s in export["kitchen/pastry"]] == [w["caption"] for w in doc["windows"]]
    lines = (out / "kitchen/pastry.txt").read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["0", "1", "2", "3"]
    assert lines[0] == f"0: {doc['windows'][0]['caption']}"
    assert (out / "ego.srt").read_text().startswith("1\n00:00:00,000 --> 00:00:01,000\n")
    failures = json.loads((out / "failures.json").read_text())
    assert [f["video_id"] for f in failures] == ["broken"] and "cannot open" in failures[0]["error"]
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.tmp"))


def test_windows_are_batched_across_videos_and_captions_do_not_depend_on_it(media_dir, tiny_checkpoint, tmp_path,
                                                                             monkeypatch) -> None:
    videos = [media_dir / EGO, media_dir / PASTRY]
    assert lib.run_library(_job(videos, tiny_checkpoint, tmp_path / "one", batch_size=1)) == 0
    batches: list[int] = []
    real = lib.narrate_batch

    def spy(model, tokenizer, video, gen, **kw):
        batches.append(video.shape[0])
        return real(model, tokenizer, video, gen, **kw)

    monkeypatch.setattr(lib, "narrate_batch", spy)
    assert lib.run_library(_job(videos, tiny_checkpoint, tmp_path / "four", batch_size=4)) == 0
    assert batches == [4, 2]  # 2 + 4 windows: the first batch holds both videos' windows
    for stem in (Path(EGO).stem, Path(PASTRY).stem):
        assert _texts(tmp_path / "one", stem) == _texts(tmp_path / "four", stem)


def test_same_captions_as_one_video_narrated_alone(media_dir, tiny_checkpoint, tmp_path) -> None:
    """The library's per-window seeding is narrate_video's: a video's captions do not depend on its library."""
    from lavila.narrate.loading import load_narrator

    out = tmp_path / "lib"
    assert lib.run_library(_job([media_dir / EGO, media_dir / PASTRY], tiny_checkpoint, out)) == 0
    model, tok, _ = load_narrator(tiny_checkpoint)
    job = _job([], tiny_checkpoint, out)
    alone = nar.narrate_video(media_dir / PASTRY, model, tok, job.generation, 1.0, 1.0, 3, seed=0)
    assert [[c["text"] for c in w["captions"]] for w in alone["windows"]] == _texts(out, Path(PASTRY).stem)


# ---------------------------------------------------------------------------------------------------------- resume
def test_an_interrupted_run_resumes_a_half_done_video_and_skips_finished_ones(media_dir, tiny_checkpoint, tmp_path,
                                                                             monkeypatch) -> None:
    videos = [media_dir / EGO, media_dir / PASTRY]
    reference = tmp_path / "reference"
    assert lib.run_library(_job(videos, tiny_checkpoint, reference, batch_size=1)) == 0

    out = tmp_path / "out"
    real = lib.narrate_batch
    calls = {"n": 0}

    def dies_on_the_fifth_batch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(lib, "narrate_batch", dies_on_the_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        lib.run_library(_job(videos, tiny_checkpoint, out, batch_size=1, part_size=1))
    # ego (2 windows) is finished; pastry has 2 of its 4 windows in part files
    assert (out / f"{Path(EGO).stem}.json").is_file() and not (out / f"{Path(PASTRY).stem}.json").exists()
    assert len(list((out / ".parts").glob("*.part"))) == 2

    narrated: list[int] = []

    def counts(model, tokenizer, video, gen, **kw):
        narrated.append(video.shape[0])
        return real(model, tokenizer, video, gen, **kw)

    monkeypatch.setattr(lib, "narrate_batch", counts)
    assert lib.run_library(_job(videos, tiny_checkpoint, out, batch_size=1, part_size=1)) == 0
    assert sum(narrated) == 2  # only pastry's last two windows
    for stem in (Path(EGO).stem, Path(PASTRY).stem):
        assert _texts(out, stem) == _texts(reference, stem)
    assert not list(out.rglob("*.part"))
    assert json.loads((out / "captions.json").read_text()).keys() == {Path(EGO).stem, Path(PASTRY).stem}

    narrated.clear()  # a third run narrates nothing
    assert lib.run_library(_job(videos, tiny_checkpoint, out, batch_size=1)) == 0
    assert narrated == []


@pytest.mark.slow
def test_killed_at_its_fail_points_then_rerun_equals_an_uninterrupted_run(media_dir, tiny_checkpoint,
                                                                         tmp_path) -> None:
    from lavila.cli import main
    from tests.failpoint_helpers import KILLED, leftover_temps, run_cli

    videos = [media_dir / EGO, media_dir / PASTRY]
    reference = tmp_path / "reference"
    assert main(_args(videos, tiny_checkpoint, reference, "--batch-size", "1", "--part-size", "1")) == 0
    out = tmp_path / "out"
    # chained: each run dies on the state the previous one left
    for term in ("narrate.part_written=3",  # ego done, pastry's first window in a part
                 f"narrate.video_written@{Path(PASTRY).stem}=1",  # pastry's .json written, not its .srt/.txt
                 "narrate.captions_written=1"):
        proc = run_cli(_args(videos, tiny_checkpoint, out, "--batch-size", "1", "--part-size", "1"), failpoints=term,
                       timeout=300)
        assert proc.returncode == KILLED, (term, proc.stderr)
    assert main(_args(videos, tiny_checkpoint, out, "--batch-size", "1", "--part-size", "1")) == 0
    for stem in (Path(EGO).stem, Path(PASTRY).stem):
        assert _texts(out, stem) == _texts(reference, stem)
        for ext in (".srt", ".txt"):
            assert (out / f"{stem}{ext}").read_text() == (reference / f"{stem}{ext}").read_text()
    assert not leftover_temps(out) and not list(out.rglob("*.part"))


def test_another_job_in_the_output_dir_is_refused_in_one_line(media_dir, tiny_checkpoint, tmp_path, capsys) -> None:
    from lavila.cli import main

    out = tmp_path / "out"
    assert main(_args([media_dir / EGO], tiny_checkpoint, out)) == 0
    capsys.readouterr()
    assert main(_args([media_dir / EGO], tiny_checkpoint, out, "--seed", "3")) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "different narration job (seed differ)" in err[0] and "--overwrite" in err[0]
    assert main(_args([media_dir / EGO], tiny_checkpoint, out, "--seed", "3", "--overwrite")) == 0
    assert json.loads((out / f"{Path(EGO).stem}.json").read_text())["job"]["seed"] == 3


def test_changing_selection_wording_or_merging_rerenders_without_narrating(media_dir, tiny_checkpoint, tmp_path,
                                                                           monkeypatch) -> None:
    out = tmp_path / "out"
    assert lib.run_library(_job([media_dir / PASTRY], tiny_checkpoint, out)) == 0
    monkeypatch.setattr(lib, "narrate_batch", lambda *a, **kw: pytest.fail("narrated again"))
    assert lib.run_library(_job([media_dir / PASTRY], tiny_checkpoint, out, subject="someone",
                                merge_repeats=True)) == 0
    doc = json.loads((out / f"{Path(PASTRY).stem}.json").read_text())
    assert doc["postprocess"] == {"select": "score", "subject": "someone", "merge_repeats": True}
    from lavila.narrate import captions as cap

    want = cap.segments_of(doc, "score", "someone", merge=True)
    assert json.loads((out / "captions.json").read_text())[Path(PASTRY).stem] == want
    assert (out / f"{Path(PASTRY).stem}.txt").read_text() == cap.to_text(want)


# ------------------------------------------------------------------------------------------------------- sharding
def test_ranks_split_the_library_by_video_and_the_last_one_exports(library, tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "out"
    videos = [v.video_id for v in lib.collect_videos([library])]
    assert videos == ["broken", "ego", "kitchen/pastry"]  # sorted paths: rank 0 takes broken + pastry, rank 1 ego
    assert lib.run_library(_job([library], tiny_checkpoint, out), rank=1, world_size=2) == 0
    assert (out / "ego.json").is_file() and not (out / "kitchen/pastry.json").exists()
    assert not (out / "captions.json").exists()  # the library is not complete yet
    # rank 0 finishes the library: it exports, and reports the failed video through its exit code
    assert lib.run_library(_job([library], tiny_checkpoint, out), rank=0, world_size=2) == 1
    assert sorted(json.loads((out / "captions.json").read_text())) == ["ego", "kitchen/pastry"]
    assert [f["video_id"] for f in json.loads((out / "failures.rank0.json").read_text())] == ["broken"]


# ------------------------------------------------------------------------------------------------ inputs, progress
def test_library_inputs(media_dir, tmp_path) -> None:
    videos = lib.collect_videos([media_dir / EGO, media_dir / EGO, tmp_path / "missing.mp4"])
    assert [v.video_id for v in videos] == [Path(EGO).stem, "missing"]  # a missing file is kept: reported failed
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").symlink_to(media_dir / EGO)
    (tmp_path / "a" / "x.mkv").symlink_to(media_dir / "flipping_a_pancake.mkv")
    with pytest.raises(lib.LibraryError, match="same outputs x.json"):
        lib.collect_videos([tmp_path / "a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(lib.LibraryError, match="no videos under"):
        lib.collect_videos([tmp_path / "empty"])


def test_every_and_the_window_plan() -> None:
    assert [lib.parse_every(s) for s in ("1s", "0.5s", "500ms", "2", "1min")] == [1.0, 0.5, 0.5, 2.0, 60.0]
    with pytest.raises(ValueError, match="expected a duration"):
        lib.parse_every("fast")
    job = nar.NarrateJob(checkpoint="x", videos=["v.mp4"])
    assert lib.window_plan(job) == (2.0, 1.0)  # the defaults
    job.every = "1s"
    assert lib.window_plan(job) == (1.0, 1.0)
    job.window = 4.0
    assert lib.window_plan(job) == (4.0, 1.0)  # a caption every second over 4 s of context


def test_every_with_stride_or_central_without_dual_encoder_is_a_usage_error(capsys) -> None:
    from lavila.cli import main

    assert main(["narrate", "v.mp4", "--checkpoint", "x", "--every", "1s", "--stride", "2"]) == 2
    assert "give --every or --stride" in capsys.readouterr().err
    assert main(["narrate", "v.mp4", "--checkpoint", "x", "--select", "central"]) == 2
    assert "--dual-encoder" in capsys.readouterr().err


def test_progress_prints_plain_lines_with_an_eta_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = lib.Progress(10, 2, rank=1, world_size=2, every=0.0, tty=False, stream=stream)
    progress.update(4)
    progress.update(6, videos=2, failed=1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[rank 1/2] narrate: 4/10 windows (40.0%), 0/2 videos, 0 failed, ")
    assert "windows/s, ETA " in lines[0]
    assert lines[-1].startswith("[rank 1/2] narrate: 10/10 windows (100.0%), 2/2 videos, 1 failed")
    quiet = io.StringIO()
    progress = lib.Progress(10, 2, rank=0, world_size=1, every=3600.0, tty=False, stream=quiet)
    progress.update(5)
    assert quiet.getvalue() == ""  # not before `every` seconds


# ------------------------------------------------------------------------------------------ checkpoints of a kind
@pytest.fixture(scope="module")
def tiny_dual_encoder(tmp_path_factory) -> Path:
    from lavila.models import create_model
    from lavila.models.config import config_to_dict
    from tests.benchmark_fixtures import TINY

    torch.manual_seed(0)
    model = create_model("CLIP_OPENAI_TIMESFORMER_BASE", **TINY)
    path = tmp_path_factory.mktemp("dual") / "tiny_dual.pt"
    torch.save({"state_dict": model.state_dict(), "model_config": config_to_dict(model.config)}, path)
    return path


def test_a_dual_encoder_given_to_narrate_is_one_line_saying_so(media_dir, tiny_dual_encoder, tmp_path,
                                                               capsys) -> None:
    from lavila.cli import main

    code = main(_args([media_dir / EGO], tiny_dual_encoder, tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("lavila narrate: error: ") and "holds a dual encoder" in err[-1]
    assert "this needs a narrator (for narrate" in err[-1]


def test_an_unknown_checkpoint_name_is_a_usage_error(media_dir, tmp_path, capsys) -> None:
    from lavila.cli import main

    assert main(_args([media_dir / EGO], "narrator-tsf-b-gpt", tmp_path / "out")) == 2
    assert "did you mean the released 'narrator-tsf-b-gpt2'" in capsys.readouterr().err


def test_select_central_and_video_rank_candidates_with_the_dual_encoder(media_dir, tiny_checkpoint,
                                                                        tiny_dual_encoder, tmp_path,
                                                                        bpe_path) -> None:
    from lavila.narrate import captions as cap
    from lavila.narrate.generate import GenerationConfig

    out = tmp_path / "out"
    job = _job([media_dir / PASTRY], tiny_checkpoint, out, select="central", dual_encoder=str(tiny_dual_encoder),
               dual_encoder_tokenizer=str(bpe_path), generation=GenerationConfig(num_return_sequences=4, max_len=6))
    assert lib.run_library(job) == 0
    doc = json.loads((out / f"{Path(PASTRY).stem}.json").read_text())
    assert doc["dual_encoder"]["checkpoint"] == str(tiny_dual_encoder.resolve())
    for w in doc["windows"]:
        assert all(-1.0 <= c["similarity"] <= 1.0 and -1.0 <= c["agreement"] <= 1.0 for c in w["captions"])
        assert w["caption"] == cap.tidy(cap.choose(w["captions"], "central")["text"])
    # --select video re-renders from the stored similarities, narrating nothing
    job.select = "video"
    assert lib.run_library(job) == 0
    doc = json.loads((out / f"{Path(PASTRY).stem}.json").read_text())
    assert [w["caption"] for w in doc["windows"]] == [
        cap.tidy(max(w["captions"], key=lambda c: (c["similarity"], -c["score"]))["text"]) for w in doc["windows"]]
