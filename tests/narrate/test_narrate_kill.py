"""`lavila narrate` killed at its fail points (real subprocesses), rerun: the merged outputs equal an uninterrupted
run's, byte for byte, with no temporary file left and every clip exactly once.

One chain of kills rather than one kill per fresh folder: each run dies at the next point, on the state the
previous kills left (a stale temporary, a half-merged folder, a failed clip to retry), which is both closer to a
bad day on a cluster and half the subprocesses. Part files have random names, so the terms match them by glob.
"""

from __future__ import annotations

import pickle

import pytest

from tests.failpoint_helpers import KILLED, leftover_temps, point_names, read_trace, run_cli

pytestmark = pytest.mark.slow

CLIPS = [("3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014", 0.0, 1.0), ("not_a_video", 0.0, 1.0),
         ("mixkit-chef-preparing-a-sauce-in-a-blender-43034-medium", 1.0, 3.0),
         ("mixkit-pastry-chef-cutting-a-loaf-into-slices-43015-medium", 2.0, 3.0)]
STEM = "clips.narrator.return_2"
MERGED = [f"{STEM}.pkl", f"{STEM}.parquet", "failures.json"]
EXPECTED_POINTS = {"atomic.tmp_written", "atomic.before_rename", "atomic.after_rename", "shards.job_written",
                   "shards.part_written", "narrate.merge_written"}
# in order; each stops a run that resumes the previous one's state
CHAIN = [
    "shards.job_written=1",  # job.json only
    "atomic.tmp_written@part-*=1",  # a part's temporary, not renamed
    "shards.part_written=2",  # clip 0 done, clip 1 failed
    "atomic.before_rename@*.pkl=1",  # every clip attempted (clip 1 retried and failed again), merge not written
    f"narrate.merge_written@{STEM}.pkl=1",  # pickle merged, Parquet and failures.json not
    f"narrate.merge_written@{STEM}.parquet=1",
    "atomic.before_rename@failures.json=1",  # all but failures.json, whose fsynced temporary is left
]


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    path = tmp_path_factory.mktemp("meta") / "clips.pkl"
    path.write_bytes(pickle.dumps([(*c, "#C C does something") for c in CLIPS]))
    return path


def _args(metadata, media_dir, checkpoint, out) -> list[str]:
    return ["narrate", "--metadata", str(metadata), "--checkpoint", str(checkpoint), "--output-dir", str(out),
            "--video-root", str(media_dir), "--chunk-len", "-1", "--fps", "-1", "--num-workers", "0",
            "--batch-size", "1", "--part-size", "1", "--num-return-sequences", "2", "--max-len", "8",
            "--device", "cpu", "--max-failure-rate", "0.5"]


def _merged_bytes(out) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in MERGED if (out / name).exists()}


def test_narrate_killed_at_each_fail_point_then_rerun_equals_an_uninterrupted_run(metadata, media_dir,
                                                                                 tiny_checkpoint, tmp_path):
    args = lambda out: _args(metadata, media_dir, tiny_checkpoint, out)  # noqa: E731
    reference = run_cli(args(tmp_path / "reference"), trace=tmp_path / "trace", timeout=600)
    assert reference.returncode == 1, reference.stderr  # clip 1 is not a video: merged, reported, exit 1
    assert "1 of 4 clips failed" in reference.stderr
    trace = read_trace(tmp_path / "trace")
    assert point_names(trace) == EXPECTED_POINTS
    assert [d for _, n, d in trace if n == "narrate.merge_written"] == MERGED
    want = _merged_bytes(tmp_path / "reference")
    assert sorted(want) == sorted(MERGED)

    out = tmp_path / "killed"
    for term in CHAIN:
        killed = run_cli(args(out), failpoints=term, timeout=600)
        assert killed.returncode == KILLED, (term, killed.returncode, killed.stderr[-2000:])
    final = run_cli(args(out), timeout=600)
    assert final.returncode == 1 and "1 of 4 clips failed" in final.stderr, final.stderr[-2000:]
    assert _merged_bytes(out) == want  # identical narrations, scores and failure list
    rows = pickle.loads((out / MERGED[0]).read_bytes())
    assert [tuple(r[:3]) for r in rows] == [CLIPS[0], CLIPS[2], CLIPS[3]]  # nothing missing or duplicated
    assert not leftover_temps(out)
    assert not list(out.rglob("*.corrupt"))
    assert sorted(p.name for p in out.iterdir()) == sorted([*MERGED, "job.json", "parts"])
