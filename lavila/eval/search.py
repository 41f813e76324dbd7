"""`lavila index` / `lavila search`: free-text search over your own videos with a dual encoder.

``lavila index VIDEO_DIR --checkpoint CKPT --out INDEX`` cuts every video into sliding windows (default 2 s, stride
2 s, 4 frames sampled at segment midpoints, the model's evaluation transform), embeds them and writes one index file
(atomic: a crash never leaves a half-written index; finished windows are kept in ``INDEX.work/`` so a rerun only
embeds what is missing). Files that cannot be opened are reported and skipped; windows that fail to decode (a
truncated file) are reported, counted and left out — never indexed as black frames.

``lavila search "text" --index INDEX [--top-k 5]`` embeds the query with the same checkpoint's text tower and
prints the best windows by cosine similarity with their timestamps.

The index is a safetensors file: the embeddings as a float32 tensor, everything else (windows, checkpoint, protocol,
skipped files) as JSON in its header. Loading it parses no pickle, so an index file from someone else cannot run
code (a pickled index — this module's format 1 — is refused, never unpickled; rebuild it).
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tyro.conf import Positional

from lavila.atomic import atomic_target, remove_stale_temps
from lavila.config import option
from lavila.data.benchmarks import SegmentDataset, SegmentSampling, VideoSegment
from lavila.data.decode import VideoDecodeError, open_video
from lavila.data.sampling import window_bounds
from lavila.dist import resolve_device
from lavila.errors import LavilaError
from lavila.eval.cache import EmbeddingCache, digest, file_fingerprint, items_digest
from lavila.eval.embed import effective_precision, embed_dataset, encode_texts, l2_normalize
from lavila.failpoints import failpoint
from lavila.models import model_transforms

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
INDEX_FORMAT = 2  # 1 was a torch.save pickle
_HEADER_KEY = "lavila.index"


@dataclass(frozen=True)
class Window:
    video: str  # path relative to the indexed folder
    start: float  # seconds
    end: float


def find_videos(folder: Path) -> list[Path]:
    """Video files under `folder` (recursive, sorted), recognised by extension, case-insensitively."""
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def plan_windows(folder: Path, window: float, stride: float) -> tuple[list[Window], list[dict[str, str]]]:
    """Windows of every readable video, and the videos skipped with the reason (unreadable, empty, no stream)."""
    windows: list[Window] = []
    skipped: list[dict[str, str]] = []
    for path in find_videos(folder):
        rel = str(path.relative_to(folder))
        try:
            reader = open_video(path)
            try:
                n, fps = len(reader), float(reader.fps)
            finally:
                close = getattr(reader, "close", None)
                if close:
                    close()
        except VideoDecodeError as err:
            skipped.append({"video": rel, "error": f"{err.kind}: {err.reason}"})
            continue
        if n <= 0 or fps <= 0:
            skipped.append({"video": rel, "error": f"no frames (frames={n}, fps={fps})"})
            continue
        windows.extend(Window(rel, s, e) for s, e in window_bounds(n / fps, window, stride))
    return windows, skipped


def _fmt_time(seconds: float) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f}"


# ----------------------------------------------------------------------------------------------------------------
# index
# ----------------------------------------------------------------------------------------------------------------


def build_index(args: IndexJob) -> dict[str, Any]:
    from lavila.eval.zeroshot import load_eval_model

    folder = Path(args.video_dir).resolve()
    out = Path(args.out)
    remove_stale_temps(out.parent, out.name)  # of an index write a kill interrupted (the work folder: the cache's)
    device = resolve_device(args.device)
    loaded = load_eval_model(args.checkpoint, args.frames, args.model)
    if loaded.kind != "dual_encoder":
        raise ValueError(f"{args.checkpoint} is a classifier checkpoint; search needs a dual encoder (text tower)")
    model, cfg = loaded.model.to(device), loaded.config
    windows, skipped = plan_windows(folder, args.window, args.stride)
    for s in skipped:
        print(f"[skip] {s['video']}: {s['error']}", file=sys.stderr)
    if not windows:
        raise RuntimeError(f"no readable video in {folder} ({len(skipped)} skipped)")
    segments = [VideoSegment(w.video, w.start, w.end, "action") for w in windows]
    dataset = SegmentDataset(folder, segments, SegmentSampling(args.frames), model_transforms(cfg)[1])
    precision = effective_precision(device, args.precision)
    protocol = {"window": args.window, "stride": args.stride, "frames": args.frames, "crop": cfg.vision.img_size}
    key = digest({"checkpoint": file_fingerprint(args.checkpoint), "model": cfg.name, "protocol": protocol,
                  "root": str(folder), "items": items_digest(segments), "precision": precision})
    work = out.with_name(out.name + ".work")
    result = embed_dataset(model.encode_image, dataset, device=device, batch_size=args.batch_size,
                           num_workers=args.workers, precision=args.precision, cache=EmbeddingCache(work, key),
                           desc="index windows")
    for i, message in sorted(result.failed.items()):
        print(f"[skip] {windows[i].video} {windows[i].start:.2f}-{windows[i].end:.2f}s: {message}", file=sys.stderr)
    ok = result.ok
    emb = l2_normalize(result.embeds[:, 0][ok]).astype(np.float32)
    kept = [w for w, good in zip(windows, ok) if good]
    index = {
        "format": INDEX_FORMAT,
        "embeddings": torch.from_numpy(emb),
        "windows": [asdict(w) for w in kept],
        "video_root": str(folder),
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "checkpoint_fingerprint": file_fingerprint(args.checkpoint),
        "model": cfg.name,
        "protocol": protocol,
        "precision": precision,
        "videos_indexed": sorted({w.video for w in kept}),
        "skipped_videos": skipped,
        "failed_windows": [{**asdict(windows[i]), "error": m} for i, m in sorted(result.failed.items())],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    save_index(index, out)
    failpoint("index.written", out.name)  # written, INDEX.work/ not yet removed
    shutil.rmtree(work, ignore_errors=True)
    return index


def save_index(index: dict[str, Any], out: str | Path) -> None:
    """Atomically write `index` (``embeddings`` tensor + JSON-able fields) as safetensors."""
    from safetensors.torch import save_file

    fields = {k: v for k, v in index.items() if k != "embeddings"}
    header = {_HEADER_KEY: json.dumps(fields, sort_keys=True)}
    with atomic_target(out) as tmp:
        save_file({"embeddings": index["embeddings"].float().contiguous()}, str(tmp), metadata=header)


@dataclass
class IndexJob:
    """Embed sliding windows of a folder of videos with a dual encoder, for ``lavila search``."""

    video_dir: Positional[str] = option(help="folder of videos (searched recursively)")
    checkpoint: str = option(help="dual-encoder checkpoint")
    out: str = option(help="index file to write")
    model: str | None = option(None, "model name when the checkpoint does not record it")
    window: float = option(2.0, "window length in seconds", positive=True)
    stride: float | None = option(None, "seconds between window starts (default: window)", positive=True)
    frames: int = option(4, "frames per window", positive=True)
    batch_size: int = option(16, "windows per batch", positive=True)
    workers: int = option(2, "decoding processes", min=0, aliases=("-j",))
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", "auto = bf16 autocast on CUDA, fp32 on CPU")

    def __post_init__(self) -> None:
        if self.stride is None:
            self.stride = self.window


def run_index(args: IndexJob) -> int:
    try:
        index = build_index(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise LavilaError(str(err), exit_code=2) from err
    print(f"indexed {len(index['windows'])} windows of {len(index['videos_indexed'])} videos -> {args.out}; "
          f"skipped {len(index['skipped_videos'])} unreadable files and {len(index['failed_windows'])} windows "
          "that failed to decode")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------------------------


def load_index(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index not found: {path} (build one with `lavila index VIDEO_DIR ...`)")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            embeddings = f.get_tensor("embeddings") if "embeddings" in f.keys() else None
        fields = json.loads(header[_HEADER_KEY])
    except Exception as err:  # noqa: BLE001 - whatever the parser says, the file is not an index we wrote
        with open(path, "rb") as fh:
            magic = fh.read(4)
        old = " (a pickle, as indexes of format 1 were: rebuild it with `lavila index`)" if magic[:2] in (
            b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05") else ""
        raise ValueError(f"{path} is not a lavila index{old}; index files are safetensors and are never unpickled, "
                         "since unpickling can run code") from err
    if not isinstance(fields, dict) or fields.get("format") != INDEX_FORMAT or embeddings is None:
        raise ValueError(f"{path} is not a lavila index of format {INDEX_FORMAT} (rebuild it with `lavila index`)")
    return {**fields, "embeddings": embeddings}


def search(index: dict[str, Any], query_embedding: np.ndarray, top_k: int = 5) -> list[dict[str, Any]]:
    """Windows ranked by cosine similarity to the (any-norm) query embedding; ties keep index order."""
    emb = index["embeddings"].double().numpy()
    q = l2_normalize(np.asarray(query_embedding, dtype=np.float64).reshape(-1))
    scores = emb @ q
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [{"rank": r + 1, "score": float(scores[i]), **index["windows"][i]} for r, i in enumerate(order)]


@dataclass
class SearchJob:
    """Search an index built by ``lavila index`` with free text; prints the best windows and their times."""

    query: Positional[str] = option(help="what to look for, e.g. 'someone kneads dough'")
    index: str = option(help="file written by `lavila index`")
    top_k: int = option(5, "how many windows to show", positive=True)
    checkpoint: str | None = option(None, "text encoder (default: the checkpoint the index records)")
    model: str | None = option(None, "model name when the checkpoint does not record it")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    bpe_path: str | None = option(None, "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz)")
    tokenizer: str | None = option(None, "HF tokenizer name or folder for DistilBERT models")
    json: bool = option(False, "print the results as JSON")


def run_search(args: SearchJob) -> int:
    from lavila.eval.zeroshot import _tokenizer, load_eval_model

    try:
        index = load_index(args.index)
        ckpt = args.checkpoint or index["checkpoint"]
        loaded = load_eval_model(ckpt, index["protocol"]["frames"], args.model)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise LavilaError(str(err), exit_code=2) from err
    device = resolve_device(args.device)
    model = loaded.model.to(device)
    q = encode_texts(model, _tokenizer(loaded.config, args), [args.query], device=device)[0]
    hits = search(index, q, args.top_k)
    if args.json:
        print(json.dumps(hits, indent=2))
        return 0
    print(f"{'rank':>4}  {'score':>7}  {'start':>11}  {'end':>11}  video")
    for h in hits:
        print(f"{h['rank']:>4}  {h['score']:7.4f}  {_fmt_time(h['start']):>11}  {_fmt_time(h['end']):>11}  "
              f"{h['video']}")
    return 0

