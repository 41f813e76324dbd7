"""`lavila narrate` reliability (issue 9): a failure threshold, failed clips retried by a rerun, the video root not
part of the job, and narrations that do not depend on batching, ``--limit`` or the world size."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest
import torch

from lavila.narrate import narrate as nar
from lavila.narrate.generate import GenerationConfig, generate

GOOD = [
    ("3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014", 0.0, 1.0),
    ("mixkit-chef-preparing-a-sauce-in-a-blender-43034-medium", 1.0, 3.0),
    ("mixkit-hands-of-a-baker-kneading-a-dough-42467-medium", 0.5, 2.5),
    ("mixkit-pastry-chef-cutting-a-loaf-into-slices-43015-medium", 2.0, 3.0),
]
MORE = [("3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014", 0.5, 1.5),
        ("mixkit-chef-preparing-a-sauce-in-a-blender-43034-medium", 0.0, 2.0)]
BAD = [("corrupt_truncated", 3.0, 4.5), ("not_a_video", 0.0, 1.0)]


def _metadata(path, clips):
    path.write_bytes(pickle.dumps([(*c, "#C C does something") for c in clips]))
    return path


def _job(metadata, root, checkpoint, out, **kw) -> nar.NarrateJob:
    settings = dict(video_root=str(root), chunk_len=-1, fps=-1, num_workers=0, batch_size=2, part_size=2,
                    generation=GenerationConfig(num_return_sequences=3, max_len=10), device="cpu")
    settings.update(kw)
    return nar.NarrateJob(metadata=str(metadata), checkpoint=str(checkpoint), output_dir=str(out), **settings)


def _cli(metadata, root, checkpoint, out, *extra) -> list[str]:
    return ["narrate", "--metadata", str(metadata), "--checkpoint", str(checkpoint), "--output-dir", str(out),
            "--video-root", str(root), "--chunk-len", "-1", "--fps", "-1", "--num-workers", "0", "--batch-size", "2",
            "--part-size", "2", "--num-return-sequences", "2", "--max-len", "8", "--device", "cpu", *extra]


def _merged(out) -> list:
    (pkl,) = out.glob("*.pkl")
    return pickle.loads(pkl.read_bytes())


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "lavila narrate: error:" in line]


def _part_records(out) -> dict[int, list]:
    records = {}
    for part in (out / "parts").glob("part-*.json"):
        body = json.loads(part.read_text())
        records.update(zip(body["indices"], body["results"]))
    return records


def _assert_same_narrations(got, want) -> None:
    """Same clips and texts; scores equal up to float rounding of differently batched matmuls."""
    assert [tuple(r[:3]) for r in got] == [tuple(r[:3]) for r in want]
    assert [list(r[3]) for r in got] == [list(r[3]) for r in want]
    for a, b in zip(got, want):
        assert list(a[4]) == pytest.approx(list(b[4]), rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------- failure threshold
def test_wrong_video_root_fails_in_one_line_and_merges_nothing(tiny_checkpoint, tmp_path, capsys) -> None:
    from lavila.cli import main

    meta = _metadata(tmp_path / "clips.pkl", GOOD)
    out = tmp_path / "out"
    code = main(_cli(meta, tmp_path / "not_the_videos", tiny_checkpoint, out))
    err = capsys.readouterr().err
    assert code == 1
    (line,) = _error_lines(err)
    assert "4 of 4 clips failed" in line and "max_failure_rate 5.0%" in line
    assert "MissingVideoError x4" in line and f"{tmp_path / 'not_the_videos' / GOOD[0][0]}.mp4" in line
    assert "--video-root" in line and "Traceback" not in err
    assert not list(out.glob("*.pkl")) and not (out / "failures.json").exists()


def test_failures_above_the_threshold_abort_and_a_rerun_retries_them(media_dir, tiny_checkpoint, tmp_path,
                                                                      capsys) -> None:
    from lavila.cli import main

    meta = _metadata(tmp_path / "clips.pkl", [GOOD[0], BAD[0], GOOD[1], BAD[1]])
    out = tmp_path / "out"
    assert main(_cli(meta, media_dir, tiny_checkpoint, out)) == 1  # 2 of 4 fail > 5 %
    (line,) = _error_lines(capsys.readouterr().err)
    assert "2 of 4 clips failed (50.0% > max_failure_rate 5.0%)" in line and "corrupt_truncated" in line
    assert not list(out.glob("*.pkl"))
    # accepting them: the rerun retries only the two failed clips, then merges and still exits 1 (clips failed)
    assert main(_cli(meta, media_dir, tiny_checkpoint, out, "--max-failure-rate", "0.5")) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.splitlines()[0])
    assert (summary["pending_at_start"], summary["retrying"], summary["failed"]) == (0, 2, 2)
    assert "2 of 4 clips failed" in captured.err and "rerun the same command to retry them" in captured.err
    assert [tuple(r[:3]) for r in _merged(out)] == [GOOD[0], GOOD[1]]
    failures = json.loads((out / "failures.json").read_text())
    assert [(f["index"], f["video_uid"]) for f in failures] == [(1, BAD[0][0]), (3, BAD[1][0])]


def test_nothing_decoding_aborts_early_but_retrying_known_failures_does_not(media_dir, tiny_checkpoint, tmp_path,
                                                                           monkeypatch) -> None:
    monkeypatch.setattr(nar, "NOTHING_DECODES_AFTER", 2)
    meta = _metadata(tmp_path / "clips.pkl", GOOD)
    out = tmp_path / "wrong_root"
    with pytest.raises(nar.NarrateError, match="none of the 2 clips tried so far could be read"):
        nar.narrate_metadata(_job(meta, tmp_path / "nowhere", tiny_checkpoint, out))
    assert sorted(nar.ShardedOutput(out, total=4).scan()[1]) == [0, 1]  # stopped after the first batch, recorded

    meta = _metadata(tmp_path / "mixed.pkl", [GOOD[0], *BAD])
    out = tmp_path / "mixed"
    first = nar.narrate_metadata(_job(meta, media_dir, tiny_checkpoint, out, max_failure_rate=0.7))
    assert (first["failed"], first["failed_total"]) == (2, 2)
    # a rerun retries only the two known failures: both fail again, which is no reason to abort
    again = nar.narrate_metadata(_job(meta, media_dir, tiny_checkpoint, out, max_failure_rate=0.7))
    assert (again["retrying"], again["failed"], again["failed_total"]) == (2, 2, 2)


def test_a_transient_failure_exits_1_and_the_rerun_retries_exactly_that_clip(media_dir, tiny_checkpoint, tmp_path,
                                                                             capsys, monkeypatch) -> None:
    from lavila.cli import main
    from lavila.data import sampling

    real = sampling.video_loader
    reads: Counter = Counter()

    def flaky(root, vid, second, end_second, **kw):
        reads[vid, second] += 1
        if (vid, second) == GOOD[1][:2] and reads[vid, second] == 1:
            raise OSError(f"{root}/{vid}.mp4: Input/output error (network share hiccup)")
        return real(root, vid, second, end_second, **kw)

    monkeypatch.setattr(sampling, "video_loader", flaky)
    meta = _metadata(tmp_path / "clips.pkl", GOOD)
    out = tmp_path / "out"
    assert main(_cli(meta, media_dir, tiny_checkpoint, out, "--max-failure-rate", "0.5")) == 1
    err = capsys.readouterr().err
    assert "1 of 4 clips failed" in err and "retry" in err
    assert [f["index"] for f in json.loads((out / "failures.json").read_text())] == [1]
    assert len(_merged(out)) == 3

    assert main(_cli(meta, media_dir, tiny_checkpoint, out, "--max-failure-rate", "0.5")) == 0
    rows = _merged(out)
    assert [tuple(r[:3]) for r in rows] == GOOD  # every clip exactly once, in input order
    assert json.loads((out / "failures.json").read_text()) == []
    assert reads == Counter({c[:2]: 1 for c in GOOD}) + Counter({GOOD[1][:2]: 1})  # only the failed clip re-read
    # the retried clip's narrations are those of a run where it never failed (seeded per clip)
    monkeypatch.setattr(sampling, "video_loader", real)
    clean = tmp_path / "clean"
    assert main(_cli(meta, media_dir, tiny_checkpoint, clean)) == 0
    _assert_same_narrations(rows, _merged(clean))


# ----------------------------------------------------------------------------------------------- job identity
def test_moving_the_videos_does_not_restart_the_job(media_dir, tiny_checkpoint, tmp_path) -> None:
    first_root = tmp_path / "videos"
    first_root.mkdir()
    for uid, _, _ in GOOD:
        (first_root / f"{uid}.mp4").symlink_to(media_dir / f"{uid}.mp4")
    meta = _metadata(tmp_path / "clips.pkl", GOOD)
    out = tmp_path / "out"
    first = nar.narrate_metadata(_job(meta, first_root, tiny_checkpoint, out, limit=2))
    assert first["narrated"] == 2 and first["merged"] is None
    # a job folder written before the video root left the fingerprint still resumes
    job_json = out / "job.json"
    legacy = json.loads(job_json.read_text())
    legacy["fingerprint"]["video_root"] = str(first_root.resolve())
    job_json.write_text(json.dumps(legacy))

    moved = first_root.rename(tmp_path / "videos_on_another_disk")
    second = nar.narrate_metadata(_job(meta, moved, tiny_checkpoint, out))
    assert second["pending_at_start"] == 2 and second["merged_rows"] == 4 and second["failed_total"] == 0
    # what changes the frames read is still part of the job
    from lavila.narrate.shards import ShardError

    with pytest.raises(ShardError, match="differs in: fps"):
        nar.narrate_metadata(_job(meta, moved, tiny_checkpoint, out, fps=10))


# ----------------------------------------------------------------------------------- batching-independent samples
def test_narrations_do_not_depend_on_batch_size_limit_or_world_size(media_dir, tiny_checkpoint, tmp_path) -> None:
    meta = _metadata(tmp_path / "clips.pkl", GOOD + MORE)
    reference = nar.narrate_metadata(_job(meta, media_dir, tiny_checkpoint, tmp_path / "b4", batch_size=4))
    assert reference["merged_rows"] == 6
    want = _merged(tmp_path / "b4")

    out = tmp_path / "b1"
    nar.narrate_metadata(_job(meta, media_dir, tiny_checkpoint, out, batch_size=1, part_size=1, limit=3))
    first_three = _part_records(out)
    assert sorted(first_three) == [0, 1, 2]
    _assert_same_narrations([first_three[i] for i in range(3)], want[:3])
    # the rest by two ranks with batches of 2 (rank 0: 4; rank 1: 3, 5)
    nar.narrate_metadata(_job(meta, media_dir, tiny_checkpoint, out, batch_size=2), rank=0, world_size=2)
    last = nar.narrate_metadata(_job(meta, media_dir, tiny_checkpoint, out, batch_size=2), rank=1, world_size=2)
    assert last["merged_rows"] == 6
    _assert_same_narrations(_merged(out), want)


def test_per_clip_generators_make_generate_independent_of_the_batch(tiny_narrator) -> None:
    model, _ = tiny_narrator
    torch.manual_seed(0)
    with torch.no_grad():
        tokens = model.encode_image(torch.randn(3, 3, 4, 32, 32))
    cfg = GenerationConfig(num_return_sequences=2, max_len=8, temperature=1.5, top_p=None)
    batch = generate(model, tokens, cfg, generators=[nar.clip_generator(0, i) for i in range(3)])
    for i in range(3):
        alone = generate(model, tokens[i:i + 1], cfg, generators=[nar.clip_generator(0, i)])
        torch.testing.assert_close(alone.ids, batch.ids[2 * i:2 * i + 2], rtol=0, atol=0)
    other_seed = generate(model, tokens, cfg, generators=[nar.clip_generator(1, i) for i in range(3)])
    assert not torch.equal(other_seed.ids, batch.ids)
    with pytest.raises(ValueError, match="one per clip"):
        generate(model, tokens, cfg, generators=[nar.clip_generator(0, 0)])


def test_inverse_cdf_sampling_has_the_right_distribution_and_never_picks_zero_probability() -> None:
    from lavila.narrate.generate import _inverse_cdf_sample

    probs = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    u = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    tokens = _inverse_cdf_sample(probs.expand(len(u), -1), u)[:, 0]
    freq = torch.bincount(tokens, minlength=6).float() / len(u)
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    edges = _inverse_cdf_sample(probs.expand(3, -1), torch.tensor([0.0, 1 - 2**-24, 0.5]))[:, 0]
    assert edges.tolist() == [4, 1, 3]  # u = 0 takes the last non-zero token, u -> 1 the first
