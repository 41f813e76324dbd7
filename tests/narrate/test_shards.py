"""Sharded outputs: rank assignment, resume after an interruption, exactly-once merge, refusals."""

from __future__ import annotations

import json

import pytest

from lavila.narrate.shards import ShardedOutput, ShardError, assigned_indices


def test_rank_r_takes_r_plus_multiples_of_world_size() -> None:
    assert assigned_indices(7, 0, 3) == [0, 3, 6]
    assert assigned_indices(7, 2, 3) == [2, 5]
    with pytest.raises(ValueError):
        assigned_indices(7, 3, 3)


def test_interrupted_ranks_resume_and_merge_each_index_once(tmp_path) -> None:
    job = ShardedOutput(tmp_path, total=10, fingerprint={"model": "x"})
    job.open()
    # rank 0 of 2 does part of its share and "crashes"; a stray temporary file is left behind
    job.write_part({0: "r0", 2: "r2"}, rank=0)
    (job.parts_dir / ".part-tmp.json.123.tmp").write_text("{half written")
    assert job.pending(0, 2) == [4, 6, 8]
    assert not job.is_complete()
    with pytest.raises(ShardError, match="not done yet"):
        job.collect()
    # rank 1 finishes with one failure, then rank 0 is rerun with another world size (1): only the rest is left
    job.write_part({1: "r1", 3: "r3", 7: "r7", 9: "r9"}, failures={5: "corrupt"}, rank=1)
    assert ShardedOutput(tmp_path, total=10, fingerprint={"model": "x"}).pending(0, 1) == [4, 6, 8]
    job.write_part({4: "r4", 6: "r6", 8: "r8"}, rank=0)
    results, failures = job.collect()
    assert list(results) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert results[7] == "r7" and failures == {5: "corrupt"}


def test_duplicate_indices_are_refused_at_merge(tmp_path) -> None:
    job = ShardedOutput(tmp_path, total=2)
    job.open()
    job.write_part({0: "a", 1: "b"})
    job.write_part({1: "again"})
    with pytest.raises(ShardError, match="more than one part"):
        job.collect()


def test_unreadable_part_is_set_aside_and_redone(tmp_path) -> None:
    job = ShardedOutput(tmp_path, total=3)
    job.open()
    job.write_part({0: "a"})
    bad = job.write_part({1: "b", 2: "c"})
    bad.write_text(bad.read_text()[:10])  # e.g. a disk problem after the atomic write
    assert job.pending() == [1, 2]
    assert bad.with_suffix(".corrupt").exists()


def test_output_dir_of_another_job_is_refused_unless_overwrite(tmp_path) -> None:
    ShardedOutput(tmp_path, total=3, fingerprint={"checkpoint": "a.pt"}).open()
    ShardedOutput(tmp_path, total=3, fingerprint={"checkpoint": "a.pt"}).write_part({0: "x"})
    with pytest.raises(ShardError, match="checkpoint"):
        ShardedOutput(tmp_path, total=3, fingerprint={"checkpoint": "b.pt"}).open()
    other = ShardedOutput(tmp_path, total=3, fingerprint={"checkpoint": "b.pt"})
    other.open(overwrite=True)
    assert other.pending() == [0, 1, 2]
    assert json.loads((tmp_path / "job.json").read_text())["fingerprint"] == {"checkpoint": "b.pt"}
