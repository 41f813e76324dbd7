"""Search indexes and embedding caches are safetensors: a crafted pickle in their place is refused and never runs."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch

from lavila.cli import main as cli_main
from lavila.eval.cache import EmbeddingCache


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_crafted_pickle_as_search_index_is_refused_and_does_not_run(tmp_path, capsys, writer):
    marker = tmp_path / "pwned"
    index = tmp_path / "videos.index"
    payload = {"format": 1, "embeddings": torch.zeros(1, 4), "windows": [], "x": Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, index)
    else:
        index.write_bytes(pickle.dumps(payload))
    rc = cli_main(["search", "someone kneads dough", "--index", str(index)])
    err = capsys.readouterr().err
    assert rc == 2
    assert not marker.exists(), "the index was unpickled: its payload ran"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(index) in lines[0] and "not a lavila index" in lines[0]
    assert "never unpickled" in lines[0] and "Traceback" not in err


def test_a_crafted_pickle_as_embedding_cache_is_ignored_and_does_not_run(tmp_path, caplog):
    marker = tmp_path / "pwned"
    cache = EmbeddingCache(tmp_path / "cache", "0123abcd")
    cache.directory.mkdir()
    crafted = pickle.dumps({"embeds": np.zeros((2, 4), np.float32), "failed": {}, "x": Payload(marker)})
    for path in (cache.path, cache.partial_path(0), cache.directory / "0123abcd.pt"):
        path.write_bytes(crafted)
    with caplog.at_level(logging.WARNING, logger="lavila.eval.cache"):
        assert cache.load() is None  # recomputed, never trusted
        assert cache.load_partials() == ({}, {})
    assert not marker.exists(), "the cache was unpickled: its payload ran"
    warnings = [r.getMessage() for r in caplog.records]
    assert any(str(cache.path) in w and "not an embedding cache file" in w for w in warnings)
    assert all("\n" not in w for w in warnings)


def test_embedding_cache_round_trip(tmp_path):
    cache = EmbeddingCache(tmp_path, "k")
    embeds = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    embeds[1] = np.nan
    cache.save(embeds, {1: "corrupt video"}, {"model": "m", "num_frames": 4})
    hit = cache.load()
    assert np.array_equal(hit["embeds"], embeds, equal_nan=True)
    assert hit["failed"] == {1: "corrupt video"} and hit["meta"] == {"model": "m", "num_frames": 4}
    cache.save_partial(0, {0: embeds[0], 2: embeds[2]}, {1: "corrupt video"})
    cache.save_partial(1, {}, {})
    done, failed = cache.load_partials()
    assert sorted(done) == [0, 2] and np.array_equal(done[2], embeds[2]) and failed == {1: "corrupt video"}
    assert cache.path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle


def test_a_crafted_pickle_as_relevancy_matrix_is_refused_and_does_not_run(tmp_path):
    from lavila.data.benchmarks import AnnotationError, load_relevancy

    marker = tmp_path / "pwned"
    path = tmp_path / "caption_relevancy_EPIC_100_retrieval_test.pkl"
    path.write_bytes(pickle.dumps([np.eye(2), Payload(marker)]))
    with pytest.raises(AnnotationError, match="refusing to load posix.system|refusing to load os.system") as info:
        load_relevancy(path)
    assert not marker.exists(), "the relevancy pickle was unpickled: its payload ran"
    assert str(path) in str(info.value)
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps(np.array([[1.0, 0.5], [0.0, 1.0]])))  # the reference's format still reads
    assert load_relevancy(good, (2, 2)).tolist() == [[1.0, 0.5], [0.0, 1.0]]
