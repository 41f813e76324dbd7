"""A training recipe -> the task's config: which task a recipe names, then its config class parses file and flags.

Kept apart from :mod:`lavila.train.config` (the fields every training job shares), which imports no task: the
tasks subclass ``TrainConfig``, and this module, above both, picks the subclass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lavila.config import ConfigError, parse, read_yaml
from lavila.train.config import TrainConfig
from lavila.train.tasks import get_task_class


def resolve_task_name(task: str | None, model: str, source: str = "default") -> str:
    """The explicit task, else the one implied by the model's kind (dual encoder or narrator)."""
    if task:
        return task
    from lavila.models.registry import MODEL_CONFIGS

    cfg = MODEL_CONFIGS.get(model)
    if cfg is None:
        raise ConfigError(f"key 'model' ({source}): unknown model {model!r}; `lavila models` lists them")
    return {"dual_encoder": "dual_encoder", "vclm": "narrator"}.get(cfg.kind, cfg.kind)


def config_class(task: str | None, model: str, sources: Mapping[str, str] | None = None) -> tuple[str, type]:
    """(task name, the task's config class) for a task name (or ``module:Class``) or, without one, a model."""
    sources = sources or {}
    name = resolve_task_name(task, model, sources.get("model", "default"))
    try:
        return name, get_task_class(name).Config
    except KeyError as err:
        raise ConfigError(f"key 'task' ({sources.get('task', 'default')}): {err.args[0]}") from None


def _peek(argv: Sequence[str], key: str) -> str | None:
    """The last value given to ``--key`` (any spelling) or ``--set key=...`` before full parsing."""
    found = None
    flag = "--" + key
    for i, tok in enumerate(argv):
        if tok == "--":
            break
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        name, eq, inline = tok.partition("=")
        canon = "--" + name.lstrip("-").replace("_", "-") if name.startswith("--") else name
        if canon == flag:
            found = inline if eq else nxt
        elif tok == "--set" and nxt is not None and nxt.replace("-", "_").startswith(f"{key}="):
            found = nxt.split("=", 1)[1]
        elif tok.startswith("--set=") and tok[len("--set="):].replace("-", "_").startswith(f"{key}="):
            found = tok.split("=", 2)[2]
    return found


def load_config(path: str | Path | None = None, argv: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
                *, prog: str = "lavila train") -> TrainConfig:
    """The task's config from a recipe file (optional), programmatic `defaults` and command-line flags."""
    file_values = read_yaml(path) if path is not None else {}
    sources: dict[str, str] = {}
    picked: dict[str, Any] = {}
    for key, fallback in (("task", None), ("model", TrainConfig.model)):
        if _peek(argv, key) is not None:
            picked[key], sources[key] = _peek(argv, key), f"--{key}"
        elif defaults and key in defaults:
            picked[key], sources[key] = defaults[key], "defaults"
        elif key in file_values:
            picked[key], sources[key] = file_values[key], str(path)
        else:
            picked[key] = fallback
    if picked["task"] is not None and not isinstance(picked["task"], str):
        raise ConfigError(f"key 'task' ({sources['task']}): expected a task name, got {picked['task']!r}")
    if not isinstance(picked["model"], str):
        raise ConfigError(f"key 'model' ({sources.get('model', 'default')}): expected a model name, "
                          f"got {picked['model']!r}")
    name, cls = config_class(picked["task"], picked["model"], sources)
    cfg = parse(cls, argv, prog=prog, yaml_path=path, defaults=defaults)
    if cfg.task is None:
        cfg.task = name
    return cfg


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """A checked config from a flat mapping (what a recipe holds), e.g. :meth:`TrainConfig.to_dict` output."""
    return load_config(None, (), defaults=values)


__all__ = ["build_config", "config_class", "load_config", "resolve_task_name"]
