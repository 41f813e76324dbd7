"""Background narration for ``lavila app``'s narrate page: one worker thread, one video at a time, progress that
the page polls.

One thread because a narrator fills the machine on its own (a second job would only halve both); jobs queue. The
narrator is loaded on the first job, not at start-up, so an app that never narrates never pays for it. The output
is the format ``lavila narrate VIDEO`` writes (``<video>.json``: every window with all candidates and scores),
with the same per-window seeds (video name + window start), so the page and the command give the same captions.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Job:
    id: str
    video: str  # the app's video id
    state: str = "queued"  # queued -> running -> done | failed
    done: int = 0  # windows narrated
    total: int = 0  # windows planned (0 until the video is opened)
    message: str = "waiting for the narrator"
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def narrate_file(path: Path, model: Any, tokenizer: Any, gen: Any, *, window: float, stride: float,
                 batch_size: int, seed: int, progress: Callable[[int, int], None] = lambda done, total: None
                 ) -> dict[str, Any]:
    """Dense captions of one video in ``lavila narrate``'s video-mode format, calling ``progress(done, total)``
    after every batch of windows; raises ``VideoDecodeError``/``ValueError`` if the video cannot be opened."""
    from lavila.data.decode import open_video
    from lavila.narrate.narrate import DECODE_ERRORS, clip_generator, clip_transform, narrate_batch, sliding_windows
    from lavila.narrate.shards import batched

    transform = clip_transform(model)
    reader = open_video(path)
    try:
        n, fps = len(reader), float(reader.fps)
        if n == 0:
            raise ValueError(f"{path.name}: no frames")
        windows = sliding_windows(n, fps, window, stride, model.config.vision.num_frames)
        out: list[dict[str, Any]] = []
        progress(0, len(windows))
        for chunk in batched(list(range(len(windows))), batch_size):
            clips, ok = [], []
            for k in chunk:
                w = windows[k]
                entry = {"start": round(w.start, 3), "end": round(w.end, 3), "frame_ids": w.frame_ids}
                out.append(entry)
                try:
                    clips.append(transform(reader.get_frames(w.frame_ids)).float())
                    ok.append(entry)
                except DECODE_ERRORS as err:
                    entry["error"] = f"{type(err).__name__}: {err}"
            if clips:
                generators = [clip_generator(seed, f"{path.name}@{e['start']}") for e in ok]
                for entry, (texts, scores) in zip(ok, narrate_batch(model, tokenizer, torch.stack(clips), gen,
                                                                    None, generators)):
                    entry["captions"] = [{"text": t, "score": s} for t, s in zip(texts, scores)]
            progress(len(out), len(windows))
    finally:
        close = getattr(reader, "close", None)
        if close:
            close()
    return {"video": str(path), "fps": fps, "num_frames": n, "duration": n / fps, "window": window,
            "stride": stride, "windows": out}


class NarrationRunner:
    """Queue of narration jobs run by one daemon thread; ``on_done(job, result)`` stores each result."""

    def __init__(self, checkpoint: str, *, tokenizer: str | None, device: torch.device, window: float,
                 stride: float, batch_size: int, seed: int, num_return_sequences: int,
                 on_done: Callable[[Job, Path, dict[str, Any]], None]) -> None:
        self.checkpoint, self.tokenizer, self.device = checkpoint, tokenizer, device
        self.window, self.stride, self.batch_size, self.seed = window, stride, batch_size, seed
        self.num_return_sequences = num_return_sequences
        self.on_done = on_done
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[tuple[Job, Path] | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._model: Any = None
        self._thread = threading.Thread(target=self._work, name="lavila-narrate", daemon=True)
        self._thread.start()

    def submit(self, video: str, path: Path) -> Job:
        """A job narrating `path`; the queued or running job of the same video if there is one."""
        with self._lock:
            for job in self.jobs.values():
                if job.video == video and job.state in ("queued", "running"):
                    return job
            job = Job(id=str(next(self._ids)), video=video)
            self.jobs[job.id] = job
        self._queue.put((job, path))
        return job

    def close(self) -> None:
        self._queue.put(None)

    def _load(self) -> tuple[Any, Any, Any]:
        if self._model is None:
            from lavila.narrate.generate import GenerationConfig
            from lavila.narrate.loading import load_narrator

            model, tokenizer, _ = load_narrator(self.checkpoint, self.device, tokenizer=self.tokenizer)
            self._model = (model, tokenizer, GenerationConfig(num_return_sequences=self.num_return_sequences))
        return self._model

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, path = item
            job.state, job.message = "running", "loading the narrator"
            try:
                model, tokenizer, gen = self._load()
                job.message = "narrating"

                def progress(done: int, total: int, job: Job = job) -> None:
                    job.done, job.total = done, total
                    job.message = f"narrated {done} of {total} windows"

                result = narrate_file(path, model, tokenizer, gen, window=self.window, stride=self.stride,
                                      batch_size=self.batch_size, seed=self.seed, progress=progress)
                self.on_done(job, path, result)
                bad = sum("error" in w for w in result["windows"])
                job.state = "done"
                job.message = f"done: {job.total - bad} windows narrated" + (
                    f", {bad} failed to decode" if bad else "")
            except Exception as err:  # noqa: BLE001 - a job fails alone; the page shows why, the app keeps serving
                job.state, job.error = "failed", f"{type(err).__name__}: {err}"
                job.message = "failed"
            finally:
                job.finished = time.time()
