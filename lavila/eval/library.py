"""The on-disk search library that ``lavila index`` writes and ``lavila search`` / ``lavila app`` read.

An index is a folder::

    INDEX/
      manifest.json                 # the commit point: format, generation, model, protocol, skipped files, ...
      embeddings.g<N>.safetensors   # float32 [segments, dim], L2-normalised, row i = segment i
      segments.g<N>.parquet         # video, start, end (seconds) of every row of the embeddings
      videos.g<N>.parquet           # every video found: size, mtime_ns, status, error, windows, failed windows
      narrations.g<N>.parquet       # video, start, end, caption, score: narrations attached with --narrations
      work/                         # embeddings of an unfinished run (resumable), removed when it is done
      thumbs/                       # thumbnails `lavila app` decodes once and keeps

Why this layout: embeddings are one contiguous tensor (a search is one matrix-vector product), metadata is
columnar (Parquet reads 100 k rows in milliseconds and any tool opens it), and nothing is pickled, so an index from
someone else cannot run code. A new version of the index is written as generation N+1 beside generation N and
becomes current only when ``manifest.json`` is atomically replaced; a kill at any point leaves the previous version
readable, and the next run removes the generations no manifest names.

Why per-video fingerprints (path relative to the indexed folder, size, mtime): rerunning ``lavila index`` on a
folder that gained videos embeds only those (and the changed ones); removed videos are dropped. Videos whose
windows failed to decode are retried on every run (a read error may be transient), unreadable files are re-probed.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from lavila.atomic import atomic_target, atomic_write_text, remove_stale_temps

LIBRARY_FORMAT = 3  # 1: a torch.save pickle (refused), 2: one safetensors file (still read), 3: this folder
MANIFEST = "manifest.json"
WORK = "work"
THUMBS = "thumbs"
TABLES = ("segments", "videos", "narrations")
_GENERATION_FILE = re.compile(r"^(embeddings|segments|videos|narrations)\.g(\d+)\.(safetensors|parquet)$")
# fields of the manifest that do not change what the index holds (two runs with equal content differ only here)
VOLATILE = ("date", "generation")


def is_library(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def generation_files(generation: int) -> dict[str, str]:
    return {"embeddings": f"embeddings.g{generation}.safetensors",
            **{t: f"{t}.g{generation}.parquet" for t in TABLES}}


# ---------------------------------------------------------------------------------------------------------- tables
_SCHEMAS: dict[str, list[tuple[str, str]]] = {
    "segments": [("video", "string"), ("start", "float64"), ("end", "float64")],
    "videos": [("video", "string"), ("size", "int64"), ("mtime_ns", "int64"), ("status", "string"),
               ("error", "string"), ("windows", "int64"), ("failed_windows", "int64")],
    "narrations": [("video", "string"), ("start", "float64"), ("end", "float64"), ("caption", "string"),
                   ("score", "float64")],
}


def _table(name: str, rows: Sequence[dict[str, Any]]):
    import pyarrow as pa

    schema = pa.schema([(col, getattr(pa, typ)()) for col, typ in _SCHEMAS[name]])
    return pa.table({col: [r.get(col) for r in rows] for col, _ in _SCHEMAS[name]}, schema=schema)


def _write_table(name: str, rows: Sequence[dict[str, Any]], path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_target(path) as tmp:
        pq.write_table(_table(name, rows), str(tmp))


def _read_table(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pylist()


# ------------------------------------------------------------------------------------------------------ read/write
def write_library(folder: str | Path, index: dict[str, Any]) -> int:
    """Write `index` (``embeddings`` tensor, ``windows``/``videos``/``narrations`` rows, manifest fields) as the next
    generation of `folder`, commit it by replacing the manifest, and remove older generations; returns it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    previous = _manifest_or_none(folder)
    generation = int(previous["generation"]) + 1 if previous else 1
    names = generation_files(generation)
    try:
        with atomic_target(folder / names["embeddings"]) as tmp:
            save_file({"embeddings": index["embeddings"].float().contiguous()}, str(tmp))
            tmp.chmod(0o644)  # safetensors creates the file anew (0600); an index is shared like any output
        _write_table("segments", index["windows"], folder / names["segments"])
        _write_table("videos", index["videos"], folder / names["videos"])
        _write_table("narrations", index.get("narrations", []), folder / names["narrations"])
    except BaseException:
        if created:  # a first write that failed (a full disk) leaves nothing behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    skip = {"embeddings", "windows", "videos", "narrations", "videos_indexed", "reused_videos"}
    manifest = {k: v for k, v in index.items() if k not in skip and not k.startswith("_")}
    manifest.update({"format": LIBRARY_FORMAT, "generation": generation, "files": names,
                     "segments": len(index["windows"]), "dim": int(index["embeddings"].shape[1])})
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return generation


def _manifest_or_none(folder: Path) -> dict[str, Any] | None:
    try:
        return read_manifest(folder)
    except (FileNotFoundError, ValueError):
        return None


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: not a finished lavila index (rerun `lavila index`)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not a lavila index manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != LIBRARY_FORMAT:
        raise ValueError(f"{path}: not a lavila index of format {LIBRARY_FORMAT} (rebuild it with `lavila index`)")
    return manifest


def read_library(folder: str | Path) -> dict[str, Any]:
    """The index in `folder` as one dict: the manifest's fields plus ``embeddings`` (float32 tensor), ``windows``,
    ``videos``, ``narrations`` (lists of row dicts) and ``videos_indexed``."""
    from safetensors import safe_open

    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest["files"]
    try:
        with safe_open(str(folder / files["embeddings"]), framework="pt") as f:
            embeddings = f.get_tensor("embeddings")
        tables = {t: _read_table(folder / files[t]) for t in TABLES}
    except Exception as err:  # noqa: BLE001 - a missing or damaged generation file: the index cannot be used
        raise ValueError(f"{folder}: index files of generation {manifest.get('generation')} unreadable "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); rebuild with "
                         "`lavila index`") from err
    if embeddings.shape[0] != len(tables["segments"]):
        raise ValueError(f"{folder}: {embeddings.shape[0]} embeddings for {len(tables['segments'])} segments")
    out = {k: v for k, v in manifest.items() if k not in ("files", "segments", "dim")}
    out.update(embeddings=embeddings, windows=tables["segments"], videos=tables["videos"],
               narrations=tables["narrations"],
               videos_indexed=sorted({w["video"] for w in tables["segments"]}))
    return out


def clean_library(folder: str | Path) -> list[Path]:
    """Remove what interrupted or superseded runs left: temporaries, generations the manifest does not name, the
    work folder of a finished run. Returns what was removed (thumbnails are kept)."""
    folder = Path(folder)
    removed = remove_stale_temps(folder, "*") + remove_stale_temps(folder / WORK, "*")
    manifest = _manifest_or_none(folder)
    current = int(manifest["generation"]) if manifest else None
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _GENERATION_FILE.match(path.name)
        if m and int(m.group(2)) != current:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_work(folder: str | Path) -> None:
    shutil.rmtree(Path(folder) / WORK, ignore_errors=True)


def same_content(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two indexes (as :func:`read_library` returns them) hold the same thing, ignoring date and generation."""
    if a is None:
        return False
    keys = {k for k in set(a) | set(b) if not k.startswith("_")} - set(VOLATILE) - {"embeddings", "reused_videos"}
    if any(_jsonable(a.get(k)) != _jsonable(b.get(k)) for k in keys):
        return False
    return a["embeddings"].shape == b["embeddings"].shape and torch.equal(a["embeddings"].float(),
                                                                          b["embeddings"].float())


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------------ narrations
def best_caption(window: dict[str, Any]) -> tuple[str, float | None] | None:
    """The caption of one narrated window: its chosen ``caption`` if the narrator wrote one, else the candidate
    with the lowest score (the most confident: ``lavila narrate``'s exp-entropy); None for a failed window."""
    if isinstance(window.get("caption"), str):
        score = window.get("score")
        return window["caption"], float(score) if isinstance(score, int | float) else None
    captions = [c for c in window.get("captions") or [] if isinstance(c, dict) and isinstance(c.get("text"), str)]
    if not captions:
        return None
    best = min(captions, key=lambda c: c.get("score", 0.0))
    return best["text"], float(best["score"]) if isinstance(best.get("score"), int | float) else None


def _narration_documents(source: Path) -> Iterable[tuple[str, Any]]:
    files = sorted(source.rglob("*.json")) if source.is_dir() else [source]
    for path in files:
        try:
            yield str(path), json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            print(f"[narrations] {path}: unreadable ({err}); ignored", file=sys.stderr)


def _video_lookup(videos: Iterable[str]) -> dict[str, str | None]:
    """Names a narration may use for an indexed video (its relative path, file name, stem) -> the video, or None
    where two videos share the name (ambiguous: that name is not used)."""
    lookup: dict[str, str | None] = {}
    for rel in videos:
        p = Path(rel)
        for key in {rel, p.name, p.stem, str(p.with_suffix(""))}:
            lookup[key] = None if key in lookup and lookup[key] != rel else rel
    return lookup


def _match(name: str, lookup: dict[str, str | None], root: Path) -> str | None:
    p = Path(name)
    if p.is_absolute():
        try:
            rel = str(p.resolve().relative_to(root))
            if lookup.get(rel):
                return lookup[rel]
        except (ValueError, OSError):
            pass
    for key in (name, p.name, p.stem, str(p.with_suffix(""))):
        if lookup.get(key):
            return lookup[key]
    return None


def load_narrations(sources: Sequence[str | Path], videos: Iterable[str],
                    root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Narration rows per indexed video from `sources` (folders of ``<video>.json`` that ``lavila narrate VIDEO...``
    writes, such files themselves, or one ``{video_id: [{start, end, caption, ...}]}`` export file).

    A document is matched to an indexed video by the path it records, or by file name / stem; documents that match
    no video (or several) are reported and ignored.
    """
    lookup = _video_lookup(videos)
    root = Path(root)
    found: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"narrations not found: {source}")
        for path, doc in _narration_documents(source):
            if isinstance(doc, dict) and isinstance(doc.get("windows"), list):  # one video's `lavila narrate` output
                names = [str(doc["video"])] if isinstance(doc.get("video"), str) else []
                names.append(Path(path).stem)  # `lavila narrate` names the file after the video's stem
                name = next((n for n in names if _match(n, lookup, root)), names[0])
                items = [(name, doc["windows"])]
            elif isinstance(doc, dict) and all(isinstance(v, list) for v in doc.values()):  # {video_id: [...]}
                items = list(doc.items())
            else:
                print(f"[narrations] {path}: not a narration file (no 'windows', not {{video: [segments]}}); ignored",
                      file=sys.stderr)
                continue
            for name, windows in items:
                video = _match(str(name), lookup, root)
                if video is None:
                    print(f"[narrations] {path}: {name!r} matches no indexed video (or several); ignored",
                          file=sys.stderr)
                    continue
                found[video] = narration_rows(video, windows)
    return found


def narration_rows(video: str, windows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Index rows (video, start, end, caption, score) of one video's narrated windows; failed windows have none."""
    rows = []
    for w in windows:
        picked = best_caption(w) if isinstance(w, dict) else None
        if picked is None or not isinstance(w.get("start"), int | float):
            continue
        rows.append({"video": video, "start": float(w["start"]), "end": float(w.get("end", w["start"])),
                     "caption": picked[0].strip(), "score": picked[1]})
    return sorted(rows, key=lambda r: (r["start"], r["end"]))


def replace_narrations(folder: str | Path, by_video: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Give the videos of `by_video` these narrations (others keep theirs) as a new generation of the index in
    `folder` (``lavila app`` after narrating a video); returns the new index."""
    index = read_library(folder)
    unknown = set(by_video) - {v["video"] for v in index["videos"]}
    if unknown:
        raise ValueError(f"not videos of {folder}: {', '.join(sorted(unknown))}")
    order = {v["video"]: k for k, v in enumerate(index["videos"])}
    rows = [r for r in index["narrations"] if r["video"] not in by_video]
    rows += [r for video_rows in by_video.values() for r in video_rows]
    index["narrations"] = sorted(rows, key=lambda r: (order[r["video"]], r["start"], r["end"]))
    index["date"] = now()
    write_library(folder, index)
    clean_library(folder)
    return read_library(folder)


class NarrationLookup:
    """Narrations overlapping a moment, per video (built once per loaded index; search shows them with hits)."""

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        self.by_video: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            self.by_video.setdefault(r["video"], []).append(r)
        for v in self.by_video.values():
            v.sort(key=lambda r: (r["start"], r["end"]))

    def __bool__(self) -> bool:
        return bool(self.by_video)

    def timeline(self, video: str) -> list[dict[str, Any]]:
        return self.by_video.get(video, [])

    def overlapping(self, video: str, start: float, end: float) -> list[dict[str, Any]]:
        """Narrations of `video` overlapping ``[start, end]``, the most overlapping first (then by time)."""
        def overlap(r: dict[str, Any]) -> float:
            return min(r["end"], end) - max(r["start"], start)

        hits = [r for r in self.timeline(video) if overlap(r) > 0 or (start == end and r["start"] <= start <= r["end"])]
        return sorted(hits, key=lambda r: (-overlap(r), r["start"]))
