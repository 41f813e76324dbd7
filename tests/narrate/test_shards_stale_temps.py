"""Opening a sharded job removes the temporaries of parts and merged files whose writer was killed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from lavila.narrate.shards import ShardedOutput


def test_open_removes_dead_writers_temporaries_and_keeps_live_ones(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    host = socket.gethostname()
    parts = tmp_path / "parts"
    parts.mkdir()
    stale = [parts / f".part-0000000000-0000000003-r00000-1234abcd.json.lavila-{dead}@{host}.abcdefgh.tmp",
             parts / ".part-0000000004-0000000007-r00001-1234abcd.json.k3j4h5g6.tmp",
             tmp_path / f".narrations.pkl.lavila-{dead}@{host}.abcdefgh.tmp"]  # an interrupted merge
    live = [parts / f".part-0000000008-0000000009-r00002-1234abcd.json.lavila-{os.getpid()}@{host}.zyxwvuts.tmp"]
    for p in stale + live:
        p.write_text("{}")
    shards = ShardedOutput(tmp_path, total=10, fingerprint={"job": 1})
    shards.open()
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)
    assert shards.pending() == list(range(10))
