"""Ego4D clip metadata: the reference pickles, a Parquet equivalent, validation and `lavila convert-metadata`.

Rows keep the reference's exact shape, because the dataset dispatches on it (spec §2.3):

* human narrations ``(video_uid, start_sec, end_sec, text: str)``
* rephraser output ``(video_uid, start_sec, end_sec, texts: list[str])`` (one drawn per access)
* narrator output ``(video_uid, start_sec, end_sec, texts: list[str], scores: list[float])``, or ``(…, str, float)``
  when the narrator returned a single sequence.

Times are absolute seconds in the full video. Text is never cleaned here: the reference tokenises whatever the
pickle holds, so the released checkpoints saw exactly those bytes.

Pickles are read with a restricted unpickler (plain containers, strings, numbers and numpy scalars/arrays only) so
a metadata file cannot run code. Parquet stores one row per clip with columns ``video_uid, start_sec, end_sec,
text (list<string>), score (list<double>, null for 4-tuples), arity (4|5), text_is_list (bool)``; the last two make
the round trip pickle -> Parquet -> pickle give back equal rows.
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tyro.conf import Positional

from lavila.atomic import atomic_write_bytes
from lavila.config import option
from lavila.errors import LavilaError

Row = tuple  # (uid, start, end, text[, score]) — see the module docstring

PICKLE_SUFFIXES = (".pkl", ".pickle")
PARQUET_SUFFIXES = (".parquet", ".pq")
_FIELDS = ("video_uid", "start_sec", "end_sec", "text", "score")


class MetadataError(LavilaError):
    """A metadata row does not have the shape the datasets expect; the message names file, row and field.

    A :class:`~lavila.errors.LavilaError` (so also a ``ValueError``): every verb that reads metadata reports it as
    one line, not a traceback.
    """

    def __init__(self, source: str, row: int | None, field: str | None, problem: str) -> None:
        where = source if row is None else f"{source}: row {row}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field, self.problem = source, row, field, problem


# ------------------------------------------------------------------------------------------------------ I/O helpers
class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain data: builtin containers, numbers, strings and NumPy arrays; any other global (the way a
    crafted pickle runs code) is refused by name. For the reference's pickles a user is given with a dataset
    (metadata rows, the EK-100 relevancy matrix), which must stay readable without trusting their sender."""

    _ALLOWED = {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only lists/tuples/dicts of str and numbers and NumPy arrays are read"
        )


def val_metadata_path(path: str) -> str:
    """The validation file of a training metadata path: ``train`` -> ``val`` in the *file name*, as the reference's
    ``metadata.replace('train', 'val')`` means it, without touching a folder that happens to contain ``train``
    (``~/training/ego4d_train.pkl``); a name without ``train`` falls back to the reference's whole-path replace."""
    folder, name = os.path.split(path)
    if "train" in name:
        return os.path.join(folder, name.replace("train", "val"))
    return path.replace("train", "val")


def _load_pickle(path: Path) -> list:
    with open(path, "rb") as f:
        try:
            rows = RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
            raise MetadataError(str(path), None, None, f"not a readable metadata pickle: {err}") from err
    if not isinstance(rows, (list, tuple)):
        raise MetadataError(str(path), None, None, f"expected a list of rows, got {type(rows).__name__}")
    return list(rows)


# ------------------------------------------------------------------------------------------------------ validation
def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check(cond: bool, source: str, i: int, field: str, problem: str) -> None:
    if not cond:
        raise MetadataError(source, i, field, problem)


def validate_row(row: Any, index: int, source: str = "<rows>") -> None:
    """Raise :class:`MetadataError` unless `row` is one of the three reference row shapes."""
    if not isinstance(row, (tuple, list)) or len(row) not in (4, 5):
        got = f"a {len(row)}-tuple" if isinstance(row, (tuple, list)) else type(row).__name__
        raise MetadataError(
            source, index, None, f"expected a 4- or 5-tuple (uid, start, end, text[, score]), got {got}"
        )
    uid, start, end, text = row[:4]
    _check(isinstance(uid, str) and uid != "", source, index, "video_uid", f"must be a non-empty str, got {uid!r:.80}")
    for name, value in (("start_sec", start), ("end_sec", end)):
        _check(_is_real(value), source, index, name, f"must be a number of seconds, got {value!r:.80}")
        _check(math.isfinite(float(value)), source, index, name, f"must be finite, got {value!r}")
    _check(float(start) >= 0, source, index, "start_sec", f"must be >= 0 (absolute seconds), got {start!r}")
    _check(float(end) >= 0, source, index, "end_sec", f"must be >= 0 (absolute seconds), got {end!r}")
    # An empty or reversed window samples frames before its start (negative ids with chunked videos).
    _check(float(end) > float(start), source, index, "end_sec",
           f"must be greater than start_sec ({start!r}), got {end!r}")
    if isinstance(text, str):
        pass
    elif isinstance(text, (list, tuple)):
        _check(len(text) > 0, source, index, "text", "an empty list of texts has nothing to sample from")
        for j, t in enumerate(text):
            _check(isinstance(t, str), source, index, "text", f"item {j} must be a str, got {t!r:.80}")
    else:
        raise MetadataError(source, index, "text", f"must be a str or a list of str, got {text!r:.80}")
    if len(row) == 5:
        score = row[4]
        if isinstance(text, str):
            _check(
                _is_real(score), source, index, "score", f"with a single text the score is a number, got {score!r:.80}"
            )
            _check(math.isfinite(float(score)), source, index, "score", f"must be finite, got {score!r}")
        else:
            _check(
                isinstance(score, (list, tuple)) and len(score) == len(text),
                source,
                index,
                "score",
                f"must be a list of {len(text)} numbers (one per text), got {score!r:.80}",
            )
            for j, s in enumerate(score):
                _check(_is_real(s), source, index, "score", f"item {j} must be a number, got {s!r:.80}")
                _check(math.isfinite(float(s)), source, index, "score", f"item {j} must be finite, got {s!r}")


def validate_rows(rows: Sequence[Any], source: str = "<rows>") -> None:
    for i, row in enumerate(rows):
        validate_row(row, i, source)


# ------------------------------------------------------------------------------------------------------ Parquet
def rows_to_table(rows: Sequence[Row]):
    """Rows -> pyarrow Table (schema in the module docstring)."""
    import pyarrow as pa

    uids, starts, ends, texts, scores, arity, is_list = [], [], [], [], [], [], []
    for row in rows:
        uid, start, end, text = row[:4]
        uids.append(uid)
        starts.append(float(start))
        ends.append(float(end))
        listed = not isinstance(text, str)
        is_list.append(listed)
        texts.append(list(text) if listed else [text])
        arity.append(len(row))
        if len(row) == 5:
            scores.append([float(s) for s in row[4]] if listed else [float(row[4])])
        else:
            scores.append(None)
    schema = pa.schema(
        [
            ("video_uid", pa.string()),
            ("start_sec", pa.float64()),
            ("end_sec", pa.float64()),
            ("text", pa.list_(pa.string())),
            ("score", pa.list_(pa.float64())),
            ("arity", pa.int8()),
            ("text_is_list", pa.bool_()),
        ],
        metadata={b"lavila.metadata": b"1"},
    )
    return pa.Table.from_arrays(
        [
            pa.array(uids, pa.string()),
            pa.array(starts, pa.float64()),
            pa.array(ends, pa.float64()),
            pa.array(texts, pa.list_(pa.string())),
            pa.array(scores, pa.list_(pa.float64())),
            pa.array(arity, pa.int8()),
            pa.array(is_list, pa.bool_()),
        ],
        schema=schema,
    )


def table_to_rows(table, source: str = "<table>") -> list[Row]:
    missing = [c for c in ("video_uid", "start_sec", "end_sec", "text") if c not in table.column_names]
    if missing:
        raise MetadataError(source, None, None, f"missing Parquet columns {missing} (have {table.column_names})")
    import pyarrow as pa

    text_type = table.schema.field("text").type
    if not (pa.types.is_list(text_type) or pa.types.is_large_list(text_type)):
        # Splitting a plain string column would silently give one "text" per character.
        raise MetadataError(source, 0 if table.num_rows else None, "text",
                            f"the column has type {text_type}; the metadata layout stores list<string> (one list of "
                            "texts per row, a one-item list for a human narration): write the file with "
                            "lavila.data.metadata.save_metadata or `lavila convert-metadata` from a pickle")
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    n = table.num_rows
    arity = cols.get("arity") or [5 if cols.get("score") and cols["score"][i] is not None else 4 for i in range(n)]
    is_list = cols.get("text_is_list") or [len(t or []) != 1 for t in cols["text"]]
    score_col = cols.get("score") or [None] * n
    rows: list[Row] = []
    for i in range(n):
        text = cols["text"][i]
        if text is None:
            raise MetadataError(source, i, "text", "is null")
        text_value = list(text) if is_list[i] else (text[0] if len(text) == 1 else None)
        if text_value is None:
            raise MetadataError(source, i, "text", f"text_is_list is false but {len(text)} texts are stored")
        row: tuple = (cols["video_uid"][i], cols["start_sec"][i], cols["end_sec"][i], text_value)
        if arity[i] == 5:
            score = score_col[i]
            if score is None:
                raise MetadataError(source, i, "score", "a 5-tuple row needs scores")
            row = row + ((list(score) if is_list[i] else score[0]),)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------------ public API
def load_metadata(path: str | os.PathLike, validate: bool = True) -> list[Row]:
    """Rows of a metadata pickle or Parquet file, validated (a bad row raises naming file, row and field)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"metadata file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise MetadataError(str(path), None, None, f"not a readable Parquet file: {err}") from err
        rows = table_to_rows(table, str(path))
    elif suffix in PICKLE_SUFFIXES:
        rows = _load_pickle(path)
    else:
        raise MetadataError(str(path), None, None, f"unknown metadata format {suffix!r} (use .pkl or .parquet)")
    if validate:
        validate_rows(rows, str(path))
    return rows


def save_metadata(rows: Sequence[Row], path: str | os.PathLike, validate: bool = True) -> None:
    """Write rows as pickle (the reference format) or Parquet, chosen by the file suffix, atomically."""
    path = Path(path)
    if validate:
        validate_rows(rows, str(path))
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        table = rows_to_table(rows)
        atomic_write_bytes(path, lambda f: pq.write_table(table, f, compression="zstd"))
    elif suffix in PICKLE_SUFFIXES:
        data = list(rows)
        atomic_write_bytes(path, lambda f: pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL))
    else:
        raise MetadataError(str(path), None, None, f"unknown metadata format {suffix!r} (use .pkl or .parquet)")


def convert_metadata(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """pickle <-> Parquet (either direction; also pkl->pkl to re-validate). Returns the number of rows."""
    rows = load_metadata(src)
    save_metadata(rows, dst, validate=False)
    return len(rows)


def iter_texts(row: Row) -> Iterable[str]:
    """All texts of a row (one for human narrations, several for rephraser/narrator rows)."""
    text = row[3]
    return [text] if isinstance(text, str) else list(text)


# ------------------------------------------------------------------------------------------------------ CLI
@dataclass
class ConvertJob:
    """Convert a metadata pickle to Parquet (or back); the format follows each file's suffix."""

    src: Positional[Path] = option(help="metadata .pkl or .parquet")
    dst: Positional[Path] = option(help="output .parquet or .pkl (format from the suffix)")
    overwrite: bool = option(False, "replace DST if it exists")


def run_convert(job: ConvertJob) -> int:
    if job.dst.exists() and not job.overwrite:
        raise LavilaError(f"{job.dst} exists (pass --overwrite to replace it)", exit_code=2)
    try:
        n = convert_metadata(job.src, job.dst)
    except (MetadataError, FileNotFoundError) as err:
        raise LavilaError(str(err)) from err
    print(f"wrote {n} rows to {job.dst}")
    return 0


__all__ = [
    "val_metadata_path",
    "ConvertJob",
    "MetadataError",
    "Row",
    "convert_metadata",
    "iter_texts",
    "load_metadata",
    "rows_to_table",
    "save_metadata",
    "table_to_rows",
    "validate_row",
    "validate_rows",
]
