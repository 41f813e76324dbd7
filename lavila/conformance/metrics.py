"""`metrics_*.json`: dispatch each top-level section to its checker.

A section `name` is checked by `check_<name>(fixture_name, section) -> list[Check]`, looked up in
:mod:`lavila.conformance.sampling` (frame sampling, chunked loader) and :mod:`lavila.conformance.eval_metrics`
(benchmark metrics). Modules are imported lazily and a section nobody can check becomes a failed Check with an
infinite error rather than a crash, so one missing piece does not hide the results of the others. Scalar top-level
entries (e.g. ``seed``) describe the file and are not sections.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

from lavila.conformance import Check

CHECKER_MODULES = ("lavila.conformance.sampling", "lavila.conformance.eval_metrics")


def _find_checker(section_name: str) -> tuple[Any | None, list[str]]:
    problems = []
    for module_name in CHECKER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            problems.append(f"{module_name}: {err}")
            continue
        fn = getattr(module, f"check_{section_name}", None)
        if fn is not None:
            return fn, problems
    return None, problems


def check_metrics(path: str | Path) -> list[Check]:
    path = Path(path)
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        return [Check(path.name, "file", math.inf, 0.0, False)]
    results: list[Check] = []
    for name, section in data.items():
        if not isinstance(section, (dict, list)):
            continue
        fn, problems = _find_checker(name)
        if fn is None:
            label = f"{name} (no checker: {'; '.join(problems)})" if problems else f"{name} (no checker)"
            results.append(Check(path.name, label, math.inf, 0.0, False))
            continue
        try:
            results.extend(fn(path.name, section))
        except Exception as err:  # a broken checker fails its section only
            results.append(Check(path.name, f"{name} ({type(err).__name__}: {err})", math.inf, 0.0, False))
    return results
