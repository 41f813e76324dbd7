"""`lavila conformance`: numerical checks of this implementation against reference fixture files.

A fixture is recognised by its file name (the generator's naming: ``clip_tiny_<variant>.pt``, ...). Each checker
rebuilds whatever it needs from the fixture's *own* config, so any variant of the generator can be checked, and
returns one :class:`Check` per comparison. The command prints one JSON line per check and exits 0 iff all pass.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import tyro

from lavila.config import option
from lavila.errors import LavilaError


@dataclass
class Check:
    fixture: str
    check: str
    max_abs_err: float
    tol: float
    ok: bool

    @classmethod
    def compare(cls, fixture: str, check: str, err: float, tol: float) -> Check:
        err = float(err)
        return cls(fixture, check, err, tol, bool(math.isfinite(err) and err <= tol))


# file-name pattern -> "module:function" taking (path) and returning list[Check]
CHECKERS: list[tuple[str, str]] = [
    (r"^clip_distilbert_tiny_.*\.pt$", "lavila.conformance.clip:check_clip_distilbert"),
    (r"^clip_tiny_.*\.pt$", "lavila.conformance.clip:check_clip"),
    (r"^losses_.*\.pt$", "lavila.conformance.losses:check_losses"),
    (r"^tokenizer_clip_.*\.json$", "lavila.conformance.tokenizer:check_tokenizer"),
    (r"^inflate_.*\.pt$", "lavila.conformance.clip:check_inflate"),
    (r"^video_transforms_.*\.pt$", "lavila.conformance.transforms:check_transforms"),
    (r"^metrics_.*\.json$", "lavila.conformance.metrics:check_metrics"),
    (r"^vclm_.*\.pt$", "lavila.conformance.vclm:check_vclm"),
]


def checker_for(path: Path):
    for pattern, target in CHECKERS:
        if re.match(pattern, path.name):
            module_name, fn = target.split(":")
            return getattr(importlib.import_module(module_name), fn)
    return None


def run_checks(paths: list[Path]) -> list[Check]:
    results: list[Check] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"conformance: no such fixture file: {path}")
        checker = checker_for(path)
        if checker is None:
            raise ValueError(
                f"conformance: {path.name} is not a fixture kind this command knows "
                f"(expected one of: {', '.join(p for p, _ in CHECKERS)})"
            )
        results.extend(checker(path))
    return results


@dataclass
class ConformanceJob:
    """Check this implementation against reference fixture files (one JSON line per check)."""

    paths: tyro.conf.Positional[list[Path]] = option(help="fixture files (or folders holding them)")


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if checker_for(q) is not None))
        else:
            out.append(p)
    return out


def run_conformance(job: ConformanceJob) -> int:
    try:
        results = run_checks(_expand(job.paths))
    except (FileNotFoundError, ValueError) as err:
        raise LavilaError(str(err), exit_code=2) from err
    for r in results:
        print(json.dumps(asdict(r)))
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", file=sys.stderr)
    return 0 if results and not failed else 1
