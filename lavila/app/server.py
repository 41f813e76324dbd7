"""The FastAPI server of ``lavila app``: JSON endpoints, video files with range requests, thumbnails, static page.

Files are only ever served by *video id*: the relative path of a video the index lists (or ``@uploads/NAME``, a
file uploaded on the narrate page). An id is refused (403) when it is absolute, contains ``..``, or resolves —
symlinks followed — outside its root (the indexed folder, or ``INDEX/uploads``); an id the index does not list is
404. No endpoint takes a file-system path, so a page on another site (the browser will send it requests to
127.0.0.1) cannot read anything but the indexed videos, and the Host check below stops DNS-rebinding pages from
reading even those.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from lavila.app import LOOPBACK, AppJob
from lavila.atomic import atomic_target, atomic_write_text
from lavila.dist import resolve_device
from lavila.eval import library
from lavila.eval.search import VIDEO_EXTENSIONS, load_index, search

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/narrate": "narrate.html"}
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
UPLOADS = "uploads"  # INDEX/uploads: files of the narrate page
UPLOAD_PREFIX = "@uploads/"
NARRATIONS = "narrations"  # INDEX/narrations: what the narrate page produced, in `lavila narrate`'s format
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,200}$")
THUMB_SIZE = (320, 180)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), bound before the server starts so its port can be printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class AppState:
    """The loaded index, the query encoder, the narration runner and every file-system decision."""

    def __init__(self, folder: Path, index: dict[str, Any], model: Any, tokenizer: Any, device: torch.device,
                 job: AppJob) -> None:
        self.folder, self.job, self.device = folder, job, device
        self.model, self.tokenizer = model, tokenizer
        self.uploads = folder / UPLOADS
        self._lock = threading.Lock()
        self._set_index(index)
        self.runner = None
        if job.narrator:
            from lavila.app.jobs import NarrationRunner

            self.runner = NarrationRunner(job.narrator, tokenizer=job.narrator_tokenizer, device=device,
                                          window=job.window, stride=job.stride, batch_size=job.batch_size,
                                          seed=job.seed, num_return_sequences=job.num_return_sequences,
                                          on_done=self._narrated)

    @classmethod
    def open(cls, job: AppJob) -> AppState:
        from lavila.models import create_model, tokenizer_for

        folder = Path(job.index)
        if not folder.is_dir():
            raise FileNotFoundError(f"not an index folder: {folder} (build one with `lavila index VIDEOS --out "
                                    f"{folder} ...`)")
        index = load_index(folder)
        device = resolve_device(job.device)
        checkpoint = job.checkpoint or index["checkpoint"]
        model = create_model(checkpoint, kind="dual_encoder").eval().to(device)
        tokenizer = tokenizer_for(model, job.tokenizer or job.bpe_path)
        return cls(folder, index, model, tokenizer, device, job)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()

    # ------------------------------------------------------------------------------------------------ index
    def _set_index(self, index: dict[str, Any]) -> None:
        self.index = index
        self.root = Path(index["video_root"]).resolve()
        self.lookup = library.NarrationLookup(index.get("narrations") or [])
        index["_narration_lookup"] = self.lookup
        durations: dict[str, float] = {}
        for w in index["windows"]:
            durations[w["video"]] = max(durations.get(w["video"], 0.0), w["end"])
        self.library_videos = durations  # video id -> seconds covered by its segments
        self.playable: dict[str, bool] = {}  # False: a link to a file outside the folder (never served)
        for video in durations:
            try:
                self.resolve(video)
                self.playable[video] = True
            except HTTPException:
                self.playable[video] = False

    def query(self, text: str, k: int) -> list[dict[str, Any]]:
        from lavila.eval.embed import encode_texts
        from lavila.eval.search import query_precision

        precision = query_precision(self.index, torch.device(self.device), "auto")  # as `lavila search` does
        with self._lock, torch.no_grad():
            q = encode_texts(self.model, self.tokenizer, [text], device=self.device, precision=precision)[0]
            return search(self.index, np.asarray(q), k)

    # ------------------------------------------------------------------------------------------------ files
    def resolve(self, video: str) -> Path:
        """The file of a video id, or HTTPException 403 (outside the roots) / 404 (not a video of this app)."""
        if not video or "\x00" in video or "\\" in video:
            raise HTTPException(400, "bad video id")
        if video.startswith(UPLOAD_PREFIX):
            root, rel = self.uploads, video[len(UPLOAD_PREFIX):]
        else:
            root, rel = self.root, video
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
            raise HTTPException(403, "outside the indexed folders")
        if root is self.uploads:
            known = len(parts) == 1 and (self.uploads / rel).is_file()
        else:
            known = rel in self.library_videos
        if not known:
            raise HTTPException(404, "not a video of this index")
        real = (root / rel).resolve()
        if not real.is_relative_to(root.resolve()):
            raise HTTPException(403, "outside the indexed folders (a link to a file elsewhere)")
        if not real.is_file():
            raise HTTPException(404, "video file not found")
        return real

    def videos(self) -> list[dict[str, Any]]:
        narrated = set(self.lookup.by_video)
        out = [{"id": v, "name": v, "duration": d, "narrated": v in narrated, "upload": False}
               for v, d in self.library_videos.items() if self.playable.get(v)]
        if self.uploads.is_dir():
            for p in sorted(self.uploads.iterdir()):
                if p.is_file() and not p.name.startswith("."):
                    vid = UPLOAD_PREFIX + p.name
                    out.append({"id": vid, "name": p.name, "duration": None, "upload": True,
                                "narrated": self._narration_file(vid).is_file()})
        return out

    def timeline(self, video: str) -> list[dict[str, Any]]:
        self.resolve(video)
        if video.startswith(UPLOAD_PREFIX):
            path = self._narration_file(video)
            if not path.is_file():
                return []
            rows = library.narration_rows(video, json.loads(path.read_text(encoding="utf-8"))["windows"])
        else:
            rows = self.lookup.timeline(video)
        return [{"start": r["start"], "end": r["end"], "caption": r["caption"]} for r in rows]

    def _narration_file(self, video: str) -> Path:
        return self.folder / NARRATIONS / f"{video}.json"

    def thumbnail(self, row: int) -> Path:
        """The JPEG of segment `row` (its middle frame), decoded once and kept in ``INDEX/thumbs/``."""
        if not 0 <= row < len(self.index["windows"]):
            raise HTTPException(404, "no such segment")
        w = self.index["windows"][row]
        path = self.resolve(w["video"])
        st = path.stat()
        key = hashlib.sha1(f"{w['video']}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        out = self.folder / library.THUMBS / f"{key}_{int(round(w['start'] * 1000))}_{int(round(w['end'] * 1000))}.jpg"
        if out.is_file():
            return out
        from PIL import Image

        from lavila.data.decode import VideoDecodeError, open_video

        try:
            reader = open_video(path)
            try:
                n, fps = len(reader), float(reader.fps)
                frame = reader.get_frames([max(0, min(int((w["start"] + w["end"]) / 2 * fps), n - 1))])[0]
            finally:
                close = getattr(reader, "close", None)
                if close:
                    close()
        except (VideoDecodeError, ValueError, OSError, IndexError, RuntimeError) as err:
            raise HTTPException(404, f"no thumbnail: {err}") from err
        image = Image.fromarray(frame.numpy())
        image.thumbnail(THUMB_SIZE)
        with atomic_target(out) as tmp:
            image.save(tmp, format="JPEG", quality=80)
        return out

    # ------------------------------------------------------------------------------------------------ narrate
    def narrate(self, video: str) -> dict[str, Any]:
        if self.runner is None:
            raise HTTPException(409, "this app has no narrator: start it with `lavila app --narrator CKPT`")
        return self.runner.submit(video, self.resolve(video)).as_dict()

    def _narrated(self, job: Any, path: Path, result: dict[str, Any]) -> None:
        """Keep a finished narration: its JSON in ``INDEX/narrations/`` (``lavila index --narrations`` reads it
        back) and, for a video of the index, in the index itself (``lavila search`` shows it too)."""
        target = self._narration_file(job.video)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(result, indent=1, ensure_ascii=False))
        if not job.video.startswith(UPLOAD_PREFIX):
            rows = library.narration_rows(job.video, result["windows"])
            with self._lock:
                self._set_index(library.replace_narrations(self.folder, {job.video: rows}))

    def save_upload(self, name: str) -> tuple[Path, str]:
        if not _SAFE_NAME.match(name) or Path(name).suffix.lower() not in VIDEO_EXTENSIONS:
            raise HTTPException(400, "file name: letters, digits, '._- ' and a video extension "
                                f"({', '.join(sorted(VIDEO_EXTENSIONS))})")
        return self.uploads / name, UPLOAD_PREFIX + name


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="LaViLa library", docs_url=None, redoc_url=None, openapi_url=None)
    loopback_only = state.job.host in LOOPBACK

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if loopback_only and host not in LOOPBACK:  # DNS rebinding: a remote page under a name resolving to us
            return JSONResponse({"detail": "this app only answers to localhost"}, status_code=400)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                       "media-src 'self'; object-src 'none'; frame-ancestors 'none'")
        return response

    for route, page in PAGES.items():
        def serve_page(page: str = page) -> FileResponse:
            return FileResponse(STATIC / page, media_type="text/html")
        app.add_api_route(route, serve_page, methods=["GET"], include_in_schema=False)

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, "not found")
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        index = state.index
        return {"segments": len(index["windows"]), "videos": len(state.library_videos),
                "narrated_videos": len(state.lookup.by_video), "model": index.get("model"),
                "narrator": state.runner is not None, "index": state.folder.name, "date": index.get("date")}

    @app.get("/api/search")
    def api_search(q: str = "", k: int = 24) -> dict[str, Any]:
        if not q.strip():
            raise HTTPException(400, "empty query")
        t0 = time.perf_counter()
        hits = state.query(q.strip(), max(1, min(int(k), 200)))
        for h in hits:
            h["playable"] = state.playable.get(h["video"], False)
            h["thumb"] = f"/thumb/{h['segment']}.jpg" if h["playable"] else None
        return {"query": q, "hits": hits, "ms": round((time.perf_counter() - t0) * 1000, 2)}

    @app.get("/api/videos")
    def api_videos() -> list[dict[str, Any]]:
        return state.videos()

    @app.get("/api/narrations")
    def api_narrations(video: str) -> dict[str, Any]:
        return {"video": video, "narrations": state.timeline(video)}

    @app.get("/media/{video:path}")
    def media(video: str) -> FileResponse:
        return FileResponse(state.resolve(video), content_disposition_type="inline")  # honours Range: bytes=

    @app.get("/thumb/{row}.jpg")
    def thumb(row: int) -> FileResponse:
        return FileResponse(state.thumbnail(row), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=86400"})

    @app.post("/api/narrate")
    async def api_narrate(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as err:
            raise HTTPException(400, "expected JSON {\"video\": ID}") from err
        if not isinstance(body, dict) or not isinstance(body.get("video"), str):
            raise HTTPException(400, "expected JSON {\"video\": ID}")
        return state.narrate(body["video"])

    @app.get("/api/jobs/{job_id}")
    def api_job(job_id: str) -> dict[str, Any]:
        job = state.runner.jobs.get(job_id) if state.runner else None
        if job is None:
            raise HTTPException(404, "no such job")
        return job.as_dict()

    @app.put("/api/uploads/{name}")
    async def upload(name: str, request: Request) -> dict[str, Any]:
        target, video = state.save_upload(name)
        limit = state.job.max_upload_mb * 1024 * 1024
        size = 0
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(target) as tmp, open(tmp, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"larger than --max-upload-mb {state.job.max_upload_mb}")
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        return {"video": video, "bytes": size}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app
