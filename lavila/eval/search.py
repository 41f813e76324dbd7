"""`lavila index` / `lavila search`: free-text search over your own videos with a dual encoder.

``lavila index VIDEO_DIR --checkpoint CKPT --out INDEX`` cuts every video into sliding windows (default 2 s, stride
2 s, 4 frames sampled at segment midpoints, the model's evaluation transform), embeds them and writes the index
folder ``INDEX`` (layout: :mod:`lavila.eval.library`). Rerunning it on the same folder embeds only the videos that
are new or changed since the last run (path, size, mtime) and drops removed ones; ``--narrations DIR_OR_JSON``
attaches the captions ``lavila narrate VIDEO...`` wrote to the segments they overlap. A kill at any point leaves the
previous index readable, and finished windows of an interrupted run are kept in ``INDEX/work/`` so a rerun only
embeds what is missing. Files that cannot be opened are reported and skipped; windows that fail to decode (a
truncated file) are reported, counted and left out — never indexed as black frames.

``lavila search "text" --index INDEX [--top-k 5]`` embeds the query with the same checkpoint's text tower and
prints the best windows by cosine similarity with their timestamps and, where the index holds narrations, the
caption of the moment. The ranking is one float32 matrix-vector product and a top-k (100 k segments: milliseconds
on a CPU, ``benchmarks/bench_search.py``), so no approximate-nearest-neighbour library is needed.

Nothing is pickled: an index from someone else cannot run code. A single-file index of format 2 (safetensors with a
JSON header) is still searched; a pickled index (format 1) is refused, never unpickled; rebuild it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tyro.conf import Positional

from lavila.config import option
from lavila.data.benchmarks import SegmentDataset, SegmentSampling, VideoSegment
from lavila.data.decode import VideoDecodeError, open_video
from lavila.data.sampling import window_bounds
from lavila.dist import bf16_supported, effective_precision, resolve_device, runnable_precision
from lavila.errors import LavilaError
from lavila.eval import library
from lavila.eval.cache import EmbeddingCache, digest, file_fingerprint, items_digest
from lavila.eval.embed import embed_dataset, encode_texts, l2_normalize
from lavila.failpoints import failpoint
from lavila.models import model_transforms

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
INDEX_FORMAT = library.LIBRARY_FORMAT  # 1: a torch.save pickle, 2: one safetensors file, 3: a folder
_HEADER_KEY = "lavila.index"  # the JSON header of a format-2 file


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


def probe_video(path: Path) -> tuple[float | None, str | None]:
    """``(duration seconds, None)`` of a readable video, ``(None, reason)`` of one that cannot be indexed."""
    try:
        reader = open_video(path)
        try:
            n, fps = len(reader), float(reader.fps)
        finally:
            close = getattr(reader, "close", None)
            if close:
                close()
    except VideoDecodeError as err:
        return None, f"{err.kind}: {err.reason}"
    if n <= 0 or fps <= 0:
        return None, f"no frames (frames={n}, fps={fps})"
    return n / fps, None


def plan_windows(folder: Path, window: float, stride: float,
                 videos: list[Path] | None = None) -> tuple[list[Window], list[dict[str, str]]]:
    """Windows of every readable video (of `videos`, default all under `folder`), and the videos skipped with the
    reason (unreadable, empty, no stream)."""
    windows: list[Window] = []
    skipped: list[dict[str, str]] = []
    for path in find_videos(folder) if videos is None else videos:
        rel = str(path.relative_to(folder))
        duration, error = probe_video(path)
        if duration is None:
            skipped.append({"video": rel, "error": error})
            continue
        windows.extend(Window(rel, s, e) for s, e in window_bounds(duration, window, stride))
    return windows, skipped


def _fmt_time(seconds: float) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f}"


# ----------------------------------------------------------------------------------------------------------------
# index
# ----------------------------------------------------------------------------------------------------------------


def build_index(args: IndexJob, loaded: Any = None) -> dict[str, Any]:
    """Create or update the index folder ``args.out``; returns the index as :func:`load_index` reads it.

    Videos whose fingerprint (relative path, size, mtime) and model/protocol match the current index keep their
    embeddings; the others are (re-)embedded; removed videos disappear. `loaded` is an already loaded dual encoder
    (:func:`lavila.eval.zeroshot.load_eval_model`'s result) for callers that hold one (``lavila app``).
    """
    from lavila.eval.zeroshot import load_eval_model

    folder = Path(args.video_dir).resolve()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file (a single-file index of an older format?); an index is a folder now: "
                         "give a new --out or remove the file")
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    device = resolve_device(args.device)
    precision = runnable_precision(device, args.precision, "this index")  # before anything is loaded or cleaned
    if out.is_dir():
        library.clean_library(out)  # temporaries and superseded generations of a run a kill interrupted
    previous = load_index(out) if library.is_library(out) else None
    if loaded is None:
        loaded = load_eval_model(args.checkpoint, args.frames, args.model)
    if loaded.kind != "dual_encoder":
        raise ValueError(f"{args.checkpoint} is a classifier checkpoint; search needs a dual encoder (text tower)")
    model, cfg = loaded.model.to(device), loaded.config
    protocol = {"window": args.window, "stride": args.stride, "frames": args.frames, "crop": cfg.vision.img_size}
    fields = {"video_root": str(folder), "checkpoint": str(Path(args.checkpoint).resolve()),
              "checkpoint_fingerprint": file_fingerprint(args.checkpoint), "model": cfg.name, "protocol": protocol,
              "precision": precision}
    reusable = previous is not None and not args.rebuild and all(
        previous.get(k) == v for k, v in fields.items() if k != "checkpoint")
    if previous is not None and not reusable and not args.rebuild:
        changed = [k for k, v in fields.items() if previous.get(k) != v and k != "checkpoint"]
        print(f"[index] {', '.join(changed)} changed since the index was built: re-embedding every video",
              file=sys.stderr)

    inside = out.resolve()
    found = [p for p in find_videos(folder) if not p.resolve().is_relative_to(inside)]  # INDEX/uploads/ is not ours
    current = {str(p.relative_to(folder)): p.stat() for p in found}
    old = {v["video"]: v for v in previous["videos"]} if reusable else {}
    keep = {rel for rel, st in current.items() if rel in old and old[rel]["status"] == "indexed"
            and (old[rel]["size"], old[rel]["mtime_ns"]) == (st.st_size, st.st_mtime_ns)}
    todo = [p for p in found if str(p.relative_to(folder)) not in keep]
    windows, skipped = plan_windows(folder, args.window, args.stride, todo)
    for s in skipped:
        print(f"[skip] {s['video']}: {s['error']}", file=sys.stderr)
    if not windows and not keep:
        raise RuntimeError(f"no readable video in {folder} ({len(skipped)} skipped)")

    out.mkdir(parents=True, exist_ok=True)
    new_rows: dict[str, list[tuple[Window, np.ndarray]]] = {}
    failed_windows: list[dict[str, Any]] = []
    if windows:
        segments = [VideoSegment(w.video, w.start, w.end, "action") for w in windows]
        dataset = SegmentDataset(folder, segments, SegmentSampling(args.frames), model_transforms(cfg)[1])
        key = digest({**fields, "checkpoint": fields["checkpoint_fingerprint"], "items": items_digest(segments)})
        result = embed_dataset(model.encode_image, dataset, device=device, batch_size=args.batch_size,
                               num_workers=args.workers, precision=precision,
                               cache=EmbeddingCache(out / library.WORK, key), desc="index windows",
                               allow_all_failed=True)
        for i, message in sorted(result.failed.items()):
            print(f"[skip] {windows[i].video} {windows[i].start:.2f}-{windows[i].end:.2f}s: {message}",
                  file=sys.stderr)
            failed_windows.append({**asdict(windows[i]), "error": message})
        emb_new = l2_normalize(result.embeds[:, 0]).astype(np.float32) if result.embeds.size else None
        for i, w in enumerate(windows):
            new_rows.setdefault(w.video, [])
            if i not in result.failed:
                new_rows[w.video].append((w, emb_new[i]))

    old_rows: dict[str, list[int]] = {}
    for i, w in enumerate(previous["windows"] if keep else []):
        old_rows.setdefault(w["video"], []).append(i)
    rows: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    videos: list[dict[str, Any]] = []
    skip_reason = {s["video"]: s["error"] for s in skipped}
    failures = {}
    for f in failed_windows:
        failures[f["video"]] = failures.get(f["video"], 0) + 1
    for rel, st in current.items():  # find_videos order: the same for a full and an incremental build
        entry = {"video": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "error": None, "failed_windows": 0}
        if rel in keep:
            ids = old_rows.get(rel, [])
            rows += [previous["windows"][i] for i in ids]
            parts.append(previous["embeddings"][ids].numpy())
            videos.append({**entry, "status": "indexed", "windows": len(ids)})
        elif rel in skip_reason:
            videos.append({**entry, "status": "skipped", "error": skip_reason[rel], "windows": 0})
        else:
            got = new_rows.get(rel, [])
            rows += [asdict(w) for w, _ in got]
            parts += [np.stack([e for _, e in got])] if got else []
            n_failed = failures.get(rel, 0)
            status = "indexed" if not n_failed else "partial" if got else "failed"
            videos.append({**entry, "status": status, "windows": len(got), "failed_windows": n_failed})
    if not rows:
        raise RuntimeError(f"no window of any video in {folder} could be decoded ({len(failed_windows)} failed)")
    embeddings = torch.from_numpy(np.concatenate(parts).astype(np.float32))

    # narrations describe the video, not the model: kept while the file is unchanged, whatever was re-embedded
    seen = {v["video"]: (v["size"], v["mtime_ns"]) for v in (previous or {}).get("videos", [])}
    unchanged = {rel for rel, st in current.items() if seen.get(rel) == (st.st_size, st.st_mtime_ns)}
    narrations = [r for r in (previous or {}).get("narrations", []) if r["video"] in unchanged]
    if args.narrations:
        attached = library.load_narrations(args.narrations, [v["video"] for v in videos if v["windows"]], folder)
        narrations = [r for r in narrations if r["video"] not in attached]
        narrations += [r for video_rows in attached.values() for r in video_rows]
        order = {rel: k for k, rel in enumerate(current)}
        narrations.sort(key=lambda r: (order[r["video"]], r["start"], r["end"]))
        print(f"[index] narrations attached to {len(attached)} videos ({sum(map(len, attached.values()))} captions)",
              file=sys.stderr)
    index = {
        "format": library.LIBRARY_FORMAT,
        **fields,
        "embeddings": embeddings,
        "windows": rows,
        "videos": videos,
        "narrations": narrations,
        "videos_indexed": sorted({w["video"] for w in rows}),
        "skipped_videos": skipped,
        "failed_windows": failed_windows,
    }
    if library.same_content(previous, index):
        library.remove_work(out)
        print(f"[index] {out} is up to date", file=sys.stderr)
        return {**previous, "reused_videos": len(keep)}
    index["date"] = library.now()
    library.write_library(out, index)
    failpoint("index.written", out.name)  # committed; INDEX/work/ and the previous generation not yet removed
    library.clean_library(out)
    library.remove_work(out)
    return {**load_index(out), "reused_videos": len(keep)}


def save_index(index: dict[str, Any], out: str | Path) -> int:
    """Atomically write `index` (``embeddings`` tensor, ``windows``/``videos``/``narrations`` rows, manifest
    fields) as the next generation of the index folder `out`; returns the generation."""
    return library.write_library(out, index)


@dataclass
class IndexJob:
    """Embed sliding windows of a folder of videos with a dual encoder, for ``lavila search`` and ``lavila app``.

    Rerun it on the same folder to add new videos: only new or changed files are embedded."""

    video_dir: Positional[str] = option(help="folder of videos (searched recursively)")
    checkpoint: str = option(help="dual-encoder checkpoint")
    out: str = option(help="index folder to create or update")
    narrations: list[str] = option(default_factory=list,
                                   help="folders or files of `lavila narrate VIDEO...` output (<video>.json) or a "
                                        "{video: [{start, end, caption}]} export, attached to the segments")
    model: str | None = option(None, "model name when the checkpoint does not record it")
    window: float = option(2.0, "window length in seconds", positive=True)
    stride: float | None = option(None, "seconds between window starts (default: window)", positive=True)
    frames: int = option(4, "frames per window", positive=True)
    batch_size: int = option(16, "windows per batch", positive=True)
    workers: int = option(2, "decoding processes", min=0, aliases=("-j",))
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "auto = bf16 autocast where the device has bf16 units (Ampere+ GPU, AVX-512-BF16/AMX CPU), else fp32")
    rebuild: bool = option(False, "re-embed every video even if the index already holds it")

    def __post_init__(self) -> None:
        if self.stride is None:
            self.stride = self.window


def run_index(args: IndexJob) -> int:
    import contextlib

    from lavila.atomic import DiskFullError
    from lavila.dist import world_info_from_env
    from lavila.locks import FolderLockedError, output_lock
    from lavila.models.hub import resolve_checkpoint

    args.checkpoint = str(resolve_checkpoint(args.checkpoint))  # a released name or URL: downloaded once, md5 checked
    # one job per index folder (ranks each hold their own lock file); a file there is build_index's error to report
    lock = contextlib.nullcontext() if Path(args.out).is_file() else \
        output_lock(args.out, "lavila index", rank=world_info_from_env().rank)
    try:
        with lock:
            index = build_index(args)
    except (FolderLockedError, DiskFullError):
        raise  # its own one line and exit code, not a bad argument (a full disk is a RuntimeError too)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise LavilaError(str(err), exit_code=2) from err
    print(f"indexed {len(index['windows'])} windows of {len(index['videos_indexed'])} videos -> {args.out} "
          f"({index.get('reused_videos', 0)} videos unchanged since the last run); skipped "
          f"{len(index['skipped_videos'])} unreadable files and {len(index['failed_windows'])} windows that failed "
          f"to decode; {len({r['video'] for r in index.get('narrations', [])})} videos have narrations")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------------------------


def load_index(path: str | Path) -> dict[str, Any]:
    """The index at `path`: a folder written by ``lavila index`` (format 3) or a single file of format 2.

    Returns the manifest's fields plus ``embeddings`` (float32 tensor ``[N, D]``), ``windows`` (``{video, start,
    end}`` per row), ``videos``, ``narrations`` and ``videos_indexed``.
    """
    path = Path(path)
    if path.is_dir():
        return library.read_library(path)
    if not path.is_file():
        raise FileNotFoundError(f"index not found: {path} (build one with `lavila index VIDEO_DIR ... --out {path}`)")
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
    if not isinstance(fields, dict) or fields.get("format") != 2 or embeddings is None:
        raise ValueError(f"{path} is not a lavila index (rebuild it with `lavila index`)")
    return {"videos": [], "narrations": [], **fields, "embeddings": embeddings}


def top_k(embeddings: torch.Tensor, query: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row indices, cosine scores)`` of the `k` rows most similar to `query`, best first; ties keep row order.

    One float32 matrix-vector product and ``torch.topk`` select the candidates (every row within 1e-4 of the k-th
    score, so float32 rounding cannot drop a row that float64 would rank in); they are re-scored in float64 and
    sorted by (score descending, row) so the order is exact and deterministic. The element-wise steps run in numpy:
    torch parallelises them over its threads, which costs tens of milliseconds on a busy machine for 100 k rows.
    """
    n = embeddings.shape[0]
    k = min(int(k), n)
    q64 = torch.as_tensor(l2_normalize(np.asarray(query, dtype=np.float64).reshape(-1)))
    if not torch.isfinite(q64).all():
        raise ValueError("the query embedding is zero or not finite")
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    emb = embeddings if embeddings.dtype == torch.float32 else embeddings.float()
    with torch.no_grad():
        scores = torch.mv(emb, q64.to(torch.float32))
        kth = float(torch.topk(scores, k, sorted=False).values.min())
    cand = np.flatnonzero(scores.numpy() >= kth - 1e-4)
    exact = emb.numpy()[cand].astype(np.float64) @ q64.numpy()
    order = np.lexsort((cand, -exact))[:k]
    return cand[order], exact[order]


def search(index: dict[str, Any], query_embedding: np.ndarray, top_k: int = 5) -> list[dict[str, Any]]:
    """Windows ranked by cosine similarity to the (any-norm) query embedding; ties keep index order.

    Each hit is ``{rank, score, video, start, end, segment}`` (segment: the row in the index), plus ``narration``
    (the caption overlapping the moment most) and ``narrations`` (all overlapping captions) where the index holds
    narrations.
    """
    rows, scores = _top_k(index["embeddings"], query_embedding, top_k)
    lookup = index.get("_narration_lookup")
    if lookup is None:
        lookup = index["_narration_lookup"] = library.NarrationLookup(index.get("narrations") or [])
    hits = []
    for r, (i, score) in enumerate(zip(rows.tolist(), scores.tolist())):
        w = index["windows"][i]
        hit = {"rank": r + 1, "score": float(score), "video": w["video"], "start": w["start"], "end": w["end"],
               "segment": i}
        if lookup:
            over = lookup.overlapping(w["video"], w["start"], w["end"])
            hit["narration"] = over[0]["caption"] if over else None
            hit["narrations"] = [{"start": o["start"], "end": o["end"], "caption": o["caption"]}
                                 for o in sorted(over, key=lambda o: o["start"])]
        hits.append(hit)
    return hits


_top_k = top_k  # `search`'s parameter is called top_k


@dataclass
class SearchJob:
    """Search an index built by ``lavila index`` with free text; prints the best windows, their times and, where
    the index holds narrations, what the narrator said about the moment."""

    query: Positional[str] = option(help="what to look for, e.g. 'someone kneads dough'")
    index: str = option(help="index folder written by `lavila index`")
    top_k: int = option(5, "how many windows to show", positive=True)
    checkpoint: str | None = option(None, "text encoder (default: the checkpoint the index records)")
    model: str | None = option(None, "model name when the checkpoint does not record it")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    bpe_path: str | None = option(None, "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz)")
    tokenizer: str | None = option(None, "HF tokenizer name or folder for DistilBERT models")
    json: bool = option(False, "print the results as JSON")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "query encoding; auto = the precision the index was built with, where this device can run it")


def query_precision(index: dict, device: torch.device, requested: str) -> str:
    """The query is encoded like the windows were: a bf16 query against fp32 embeddings (or the reverse) shifts
    every score by ~1e-3, enough to reorder near ties; ``auto`` therefore follows the index, falling back to this
    device's default where the index's precision cannot run here (fp16 built on a GPU, searched on a CPU). An
    explicit choice is kept, except one that cannot run here (fp16 off CUDA: a one-line error)."""
    if requested != "auto":
        return runnable_precision(device, requested, "this search")
    built = index.get("precision", "fp32")
    if built == "fp32" or (built == "bf16" and bf16_supported(device)) or (built == "fp16" and device.type == "cuda"):
        return built
    return effective_precision(device, "auto")


def run_search(args: SearchJob) -> int:
    from lavila.eval.zeroshot import _tokenizer, load_eval_model

    try:
        index = load_index(args.index)
        device = resolve_device(args.device)
        precision = query_precision(index, device, args.precision)  # refused (fp16 off CUDA) before the model loads
        from lavila.models.hub import resolve_checkpoint

        ckpt = str(resolve_checkpoint(args.checkpoint)) if args.checkpoint else index["checkpoint"]
        loaded = load_eval_model(ckpt, index["protocol"]["frames"], args.model)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise LavilaError(str(err), exit_code=2) from err
    model = loaded.model.to(device)
    q = encode_texts(model, _tokenizer(loaded.model, args), [args.query], device=device, precision=precision)[0]
    hits = search(index, q, args.top_k)
    if args.json:
        print(json.dumps(hits, indent=2))
        return 0
    narrated = any("narration" in h for h in hits)
    print(f"{'rank':>4}  {'score':>7}  {'start':>11}  {'end':>11}  video" + ("  | narration" if narrated else ""))
    for h in hits:
        caption = f"  | {h['narration']}" if h.get("narration") else ""
        print(f"{h['rank']:>4}  {h['score']:7.4f}  {_fmt_time(h['start']):>11}  {_fmt_time(h['end']):>11}  "
              f"{h['video']}{caption}")
    return 0
