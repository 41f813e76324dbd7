"""`lavila app`: a local web app over a search index (``lavila index``): search box, thumbnails, a player that
jumps to the moment, the narration timeline, and a page that narrates a video with a progress bar.

FastAPI + uvicorn serving one plain HTML/JS page (no build step, no Gradio): the dependencies are two small wheels
(``pip install -e ".[app]"``), the server is ordinary HTTP that a headless browser and a plain HTTP client can test,
and video files are served with HTTP range requests so the browser's player seeks without downloading the file.
See ``docs/app.md`` (and why not Gradio, which the LaViLa Hugging Face demo used).

Only wiring lives here, so ``lavila app --help`` works without the optional dependencies; the server is
:mod:`lavila.app.server`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lavila.config import option
from lavila.errors import LavilaError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class AppJob:
    """Serve a local web app over an index built by ``lavila index`` (search, play, narrate)."""

    index: str = option(help="index folder written by `lavila index`")
    host: str = option("127.0.0.1", "address to listen on (127.0.0.1 = this machine only)")
    port: int = option(8765, "port (0 = any free port)", min=0)
    checkpoint: str | None = option(None, "dual encoder for the queries (default: the checkpoint the index records)")
    bpe_path: str | None = option(None, "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz)")
    tokenizer: str | None = option(None, "HF tokenizer name or folder for DistilBERT models")
    narrator: str | None = option(None, "narrator checkpoint: enables the narrate page")
    narrator_tokenizer: str | None = option(None, "the narrator's GPT-2 tokenizer folder (default: its own)")
    window: float = option(2.0, "narrate page: window length in seconds", positive=True)
    stride: float = option(1.0, "narrate page: seconds between window starts", positive=True)
    num_return_sequences: int = option(10, "narrate page: candidate captions per window", positive=True)
    batch_size: int = option(8, "narrate page: windows per forward pass", positive=True)
    seed: int = option(0, "narrate page: sampling seed (the same captions as `lavila narrate --seed`)")
    max_upload_mb: int = option(2048, "largest video the narrate page accepts, in MB", positive=True)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    allow_remote: bool = option(False, "allow --host other than loopback (the app has no authentication)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = option("warning", "uvicorn log level")


def run_app(job: AppJob) -> int:
    if job.host not in LOOPBACK and not job.allow_remote:
        raise LavilaError(f"--host {job.host} would expose your videos to the network and the app has no login; "
                          "pass --allow-remote if that is what you want", exit_code=2)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise LavilaError(f"`lavila app` needs FastAPI and uvicorn ({err.name} is missing): "
                          "pip install -e \".[app]\"", exit_code=2) from err
    from lavila.app.server import AppState, bind, create_app

    try:
        state = AppState.open(job)
        sock = bind(job.host, job.port)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        raise LavilaError(str(err), exit_code=2) from err
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level=job.log_level))
    host, port = sock.getsockname()[:2]
    print(f"lavila app: {len(state.index['windows'])} segments of {len(state.index['videos_indexed'])} videos from "
          f"{state.folder}; open http://{'[' + host + ']' if ':' in host else host}:{port}/ (Ctrl+C stops)",
          flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        state.close()
    return 0
