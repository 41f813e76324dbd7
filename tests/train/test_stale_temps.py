"""A training run removes the temporaries that killed saves left in its output folder (only dead writers')."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from lavila.train.loop import train
from tests.train.helpers import tiny_config


def test_training_start_removes_stale_temporaries_of_its_own_files(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    host = socket.gethostname()
    stale = [tmp_path / f".checkpoint.pt.lavila-{dead}@{host}.abcdefgh.tmp",  # a kill during a save
             tmp_path / f".checkpoint_0001.pt.lavila-{dead}@{host}.abcdefgh.tmp",
             tmp_path / ".metrics.jsonl.k3j4h5g6.tmp"]  # an older version's temporary
    kept = [tmp_path / f".checkpoint.pt.lavila-{os.getpid()}@{host}.zyxwvuts.tmp",  # a live writer's
            tmp_path / "notes.tmp"]  # not one of the run's temporaries
    for p in stale + kept:
        p.write_bytes(b"x" * 1000)
    result = train(tiny_config(tmp_path, epochs=1, synthetic_train_size=4))
    assert result.epochs_done == 1
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
