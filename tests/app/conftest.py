"""A tiny library for the app tests: three real clips copied from ../shared/media (copies, so that they lie inside
the indexed folder), a symlink to a clip outside it, narrations for one clip, a tiny random dual encoder and a tiny
random narrator. The app runs in a thread of the test process on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.benchmark_files import BLENDER, EGO, KNEAD, PASTRY
from tests.conftest import MEDIA

pytest.importorskip("fastapi", reason="the app's optional dependencies: pip install -e '.[app]'")
pytest.importorskip("uvicorn", reason="the app's optional dependencies: pip install -e '.[app]'")

CAPTIONS = ["#O a baker kneads the dough on the table", "#O a baker folds the dough", "#O a baker shapes a loaf"]


@pytest.fixture(scope="session")
def library_dir(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    from lavila.eval.search import IndexJob, build_index

    if not MEDIA.is_dir():
        pytest.skip(f"shared media not found at {MEDIA} (set LAVILA_SHARED)")
    base = tmp_path_factory.mktemp("library")
    videos = base / "videos"
    (videos / "kitchen").mkdir(parents=True)
    shutil.copy(MEDIA / KNEAD, videos / "kitchen" / "knead.mp4")  # 5 s at 10 fps: windows 0-2, 2-4, 3-5
    shutil.copy(MEDIA / PASTRY, videos / "kitchen" / "pastry.mp4")  # 4 s
    shutil.copy(MEDIA / EGO, videos / "ego.mp4")  # 2 s
    (videos / "outside.mp4").symlink_to(MEDIA / BLENDER)  # indexed, but resolves outside the folder: never served
    narrations = base / "captions"
    narrations.mkdir()
    (narrations / "knead.json").write_text(json.dumps({
        "video": str(videos / "kitchen" / "knead.mp4"), "fps": 10.0, "num_frames": 50, "duration": 5.0,
        "window": 2.0, "stride": 1.5, "windows": [
            {"start": s, "end": s + 2.0, "frame_ids": [], "captions": [{"text": c, "score": 1.0}]}
            for s, c in zip([0.0, 1.5, 3.0], CAPTIONS)]}))
    out = base / "videos.index"
    build_index(IndexJob(video_dir=str(videos), checkpoint=str(tiny_checkpoint), out=str(out), workers=0,
                         device="cpu", narrations=[str(narrations)]))
    return {"base": base, "videos": videos, "index": out}


@pytest.fixture(scope="session")
def tiny_narrator_checkpoint(tmp_path_factory) -> Path:
    from lavila.narrate.tiny import create_tiny_narrator_checkpoint

    return create_tiny_narrator_checkpoint(tmp_path_factory.mktemp("vclm") / "tiny_vclm.pt", seed=0)


class RunningApp:
    def __init__(self, state, server, thread, base_url: str) -> None:
        self.state, self.server, self.thread, self.url = state, server, thread, base_url


@pytest.fixture
def app_server(library_dir, tmp_path, bpe_path, tiny_narrator_checkpoint):
    """The app on a fresh copy of the tiny index (tests that narrate or upload change it)."""
    import uvicorn

    from lavila.app import AppJob
    from lavila.app.server import AppState, bind, create_app

    index = tmp_path / "videos.index"
    shutil.copytree(library_dir["index"], index)
    job = AppJob(index=str(index), bpe_path=str(bpe_path), narrator=str(tiny_narrator_checkpoint), device="cpu",
                 port=0, num_return_sequences=2, batch_size=4, max_upload_mb=5)
    state = AppState.open(job)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the app did not start within 30 s"
    port = sock.getsockname()[1]
    yield RunningApp(state, server, thread, f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(timeout=15)
    state.close()
    sock.close()
