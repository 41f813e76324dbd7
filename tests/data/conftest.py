"""Fixtures of the data tests: small synthetic videos whose frames carry their own index.

Synthetic clips are written with PyAV into tmp folders (never committed); real clips come from ../shared/media via
the `media_dir` fixture of tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lavila.data.prepare import write_synthetic_video

CHUNK_SECONDS = 2
FPS = 30


@pytest.fixture(scope="session")
def coded_video(tmp_path_factory) -> Path:
    """300 frames at 30 fps, keyframe every 30 frames: frame i shows the code of i."""
    path = tmp_path_factory.mktemp("coded") / "coded.mp4"
    write_synthetic_video(path, 300, fps=FPS, gop=30)
    return path


def _write_chunk(path: Path, first: int, count: int) -> None:
    from lavila.data.prepare import coded_frame, write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, (coded_frame(first + i) for i in range(count)), FPS, gop=15)


@pytest.fixture(scope="session")
def chunked_root(tmp_path_factory) -> Path:
    """An Ego4D-style chunk tree with 2-second chunks (60 frames at 30 fps); frame codes are global indices.

    * `vidA`: chunks 0 and 2 (60 frames each) — a window may cross into the next chunk.
    * `short`: chunk 0 has 59 frames (one short, the AVION #17 situation) and chunk 2 has 60.
    * `lastonly`: a single 60-frame chunk (no next chunk: the loader re-samples the tail).
    """
    root = tmp_path_factory.mktemp("chunks")
    _write_chunk(root / "vidA.mp4" / "0.mp4", 0, 60)
    _write_chunk(root / "vidA.mp4" / "2.mp4", 60, 60)
    _write_chunk(root / "short.mp4" / "0.mp4", 0, 59)
    _write_chunk(root / "short.mp4" / "2.mp4", 1000, 60)
    _write_chunk(root / "lastonly.mp4" / "0.mp4", 0, 60)
    return root
