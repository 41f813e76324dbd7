"""Training configuration: YAML recipe files -> dataclasses, command-line overrides, validation.

A recipe is data: one flat YAML mapping whose keys are the reference's flag names with ``_`` instead of ``-``
(``batch_size: 32``, ``metadata_aux: [a.pkl, b.pkl]``). The keys split in two dataclasses:

* :class:`TrainConfig` holds what every training job shares (data roots, schedule, optimiser, precision,
  checkpointing, distributed/SLURM launch);
* the *task* (``lavila.train.tasks``) contributes its own options dataclass (``Task.Options``), e.g. the dual
  encoder's ``norm_embed``/``freeze_temperature``/``metadata_aux``. It is stored in ``TrainConfig.task_cfg``.

Overrides come from the command line exactly as the reference spells its flags (``--batch-size 8``,
``--norm-embed``, ``--metadata-aux a.pkl b.pkl``, ``--betas 0.9 0.98``, ``--use_volta32``) or as
``--set key=value`` (value parsed as YAML). Every bad value is reported with the key, where it came from (file or
flag) and what was expected, because a typo in a 32-GPU job should fail in the first second, not the first hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message always names the offending key and its source."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Sequence[Any] | None = None,
           min: float | None = None, positive: bool = False, default_factory: Any = dataclasses.MISSING,
           launch: bool = False) -> Any:
    """A dataclass field carrying its help text and value checks (used by TrainConfig and task options).

    ``launch=True`` marks SLURM/submitit keys: giving one of them on the command line routes the job to submitit.
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "min": min, "positive": positive,
            "launch": launch}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything the training loop itself needs; task-specific keys live in ``task_cfg``."""

    # --- what to train -------------------------------------------------------------------------------------
    task: str | None = option(None, "task to run (dual_encoder, narrator, ...); default: from the model's kind")
    model: str = option("CLIP_OPENAI_TIMESFORMER_BASE", "registry model name (`lavila models`)")
    model_overrides: dict[str, Any] = option(
        default_factory=dict, help="registry overrides for create_model, e.g. {img_size: 32, vision_layers: 2}")
    # --- data ----------------------------------------------------------------------------------------------
    dataset: str = option("ego4d", "training data: ego4d (metadata + video chunks) or synthetic (embedded set)")
    root: str = option("datasets/Ego4D/video_5min_chunks_288px/", "video root folder")
    metadata: str = option("datasets/Ego4D/ego4d_train.pkl", "training metadata (pickle/Parquet)")
    output_dir: str = option("./", "checkpoints, metrics.jsonl and plots go here")
    clip_length: int = option(4, "frames per clip", positive=True)
    clip_stride: int = option(16, "frame stride for dense sampling", positive=True)
    sparse_sample: bool = option(False, "segment-based sparse sampling over the whole window")
    workers: int = option(10, "DataLoader worker processes per rank", min=0)
    # --- schedule / optimiser ------------------------------------------------------------------------------
    epochs: int = option(5, "training epochs", positive=True)
    warmup_epochs: float = option(1, "linear warm-up length in epochs (fractions allowed)", min=0)
    start_epoch: int = option(0, "first epoch (overwritten by resume)", min=0)
    batch_size: int = option(32, "clips per GPU/process per step", positive=True)
    lr: float = option(3e-5, "peak learning rate", positive=True)
    fix_lr: bool = option(False, "constant --lr from step 0 (no warm-up, no cosine)")
    lr_start: float = option(1e-6, "warm-up start learning rate", min=0)
    lr_end: float = option(1e-5, "cosine end learning rate", min=0)
    update_freq: int = option(1, "gradient accumulation: optimiser step every N micro-batches", positive=True)
    wd: float = option(0.01, "AdamW weight decay (decayed group only)", min=0)
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas")
    eps: float = option(1e-8, "AdamW eps", positive=True)
    clip_grad_type: str = option("norm", "gradient clipping kind", choices=("norm", "value"))
    clip_grad_value: float | None = option(None, "clip gradients at this norm/value (off when unset)", positive=True)
    # --- precision / memory --------------------------------------------------------------------------------
    disable_amp: bool = option(False, "train in fp32 even on CUDA")
    amp_dtype: str = option("auto", "autocast dtype on CUDA (auto = bf16 where supported, else fp16)",
                            choices=("auto", "bf16", "fp16"))
    use_checkpoint: bool = option(False, "gradient (activation) checkpointing in the towers")
    use_zero: bool = option(False, "ZeroRedundancyOptimizer: shard AdamW state over ranks")
    use_fsdp: bool = option(False, "FSDP2 (fully_shard) each transformer block and the model")
    find_unused_parameters: bool = option(False, "DDP find_unused_parameters")
    # --- evaluation / checkpoints / logging ----------------------------------------------------------------
    eval_freq: int = option(99, "validation loss every N epochs", positive=True)
    eval_in_middle_freq: int = option(-1, "task evaluation every N optimiser steps (-1 = off)")
    eval_at_start: bool = option(False, "run the task evaluation once before training")
    save_freq: int = option(1, "keep checkpoint_{epoch:04d}.pt every N epochs", positive=True)
    print_freq: int = option(10, "log metrics every N optimiser steps", positive=True)
    progress: bool = option(True, "tqdm progress bar on rank 0")
    plot: bool = option(True, "write training_curves.png at the end")
    wandb: bool = option(False, "log to Weights & Biases (if installed)")
    wandb_project: str = option("LaVid", "W&B project")
    tensorboard: bool = option(False, "write TensorBoard events to output_dir/tb (if installed)")
    # --- resume / init -------------------------------------------------------------------------------------
    resume: str = option("", "checkpoint to resume from (reference semantics; output_dir/checkpoint.pt wins)")
    init_from: str = option("", "load only model weights from this checkpoint (strict=False), e.g. a released one")
    trust_checkpoint: bool = option(False, "allow torch.load(weights_only=False) for checkpoints you trust")
    stop_after_steps: int | None = option(
        None, "save and stop after this many optimiser steps in total (simulates an interruption)", positive=True)
    # --- system / distributed ------------------------------------------------------------------------------
    seed: int = option(0, "random seed (data order, augmentation, init)", min=0)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    dist_url: str = option("env://", "process-group init method")
    dist_backend: str = option("auto", "auto (nccl on CUDA, gloo on CPU), nccl or gloo",
                               choices=("auto", "nccl", "gloo"))
    # --- launching (SLURM via submitit) --------------------------------------------------------------------
    launcher: str = option("auto", "auto (submitit when a SLURM flag is on the command line), local or submitit",
                           choices=("auto", "local", "submitit"))
    cluster: str | None = option(None, "submitit cluster: slurm, local or debug (default: auto-detect)",
                                 choices=("slurm", "local", "debug"), launch=True)
    nodes: int = option(8, "SLURM nodes", positive=True, launch=True)
    ngpus: int = option(8, "GPUs (= tasks) per node", positive=True, launch=True)
    timeout: int = option(2880, "SLURM time limit in minutes", positive=True, launch=True)
    partition: str = option("learnlab", "SLURM partition", launch=True)
    use_volta32: bool = option(False, "request 32 GB V100s (constraint volta32gb)", launch=True)
    comment: str = option("", "SLURM comment", launch=True)
    job_dir: str = option("", "submitit folder and output_dir ('%j' = job id)", launch=True)
    mem_gb_per_gpu: int = option(40, "host memory per GPU in GB", positive=True, launch=True)
    cpus_per_task: int = option(10, "CPUs per task", positive=True, launch=True)
    slurm_signal_delay_s: int = option(120, "seconds between the pre-emption signal and the kill", min=0,
                                       launch=True)
    slurm_max_num_timeout: int = option(30, "how many times a timed-out job is requeued", min=0, launch=True)

    # Not configuration keys: the task's options and which keys the command line set.
    task_cfg: Any = field(default=None, repr=False, compare=False, metadata={"internal": True})
    cli_keys: frozenset[str] = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{key: value}`` of TrainConfig and task keys (what a YAML recipe contains)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in config_fields(type(self))}
        if self.task_cfg is not None:
            out.update({f.name: _plain(getattr(self.task_cfg, f.name)) for f in config_fields(type(self.task_cfg))})
        return out

    def to_namespace(self) -> argparse.Namespace:
        """The reference's ``args`` (a flat Namespace), stored in checkpoints for loaders that read it."""
        return argparse.Namespace(**self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def submit_requested(self) -> bool:
        """True when the job should go to submitit rather than run in this process."""
        if self.launcher != "auto":
            return self.launcher == "submitit"
        launch_keys = {f.name for f in config_fields(TrainConfig) if f.metadata.get("launch")}
        return bool(self.cli_keys & launch_keys)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


@dataclass
class NoOptions:
    """Options of a task that has none."""


# ---------------------------------------------------------------------------------------------------------------
# Type coercion
# ---------------------------------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or a command-line string) to type `tp`; raise ConfigError naming `where`."""
    from_cli = isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_cli and value.strip().lower() in _NONE)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return yaml.safe_load(value) if from_cli else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_cli and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if from_cli:
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if from_cli:
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. a comment or partition that YAML read as a number
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        items = value if isinstance(value, list | tuple) else [value]
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(items)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values ({_type_name(tp)}), got {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if from_cli:
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping like {{key: value}}, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def _check(value: Any, f: dataclasses.Field, where: str) -> None:
    if value is None:
        return
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
    if meta.get("positive") and isinstance(value, int | float) and not value > 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")
    if meta.get("min") is not None and isinstance(value, int | float) and value < meta["min"]:
        raise ConfigError(f"{where}: must be >= {meta['min']}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Command-line overrides
# ---------------------------------------------------------------------------------------------------------------

# Reference flags whose name is not simply the key with '-' for '_'.
FLAG_ALIASES = {"j": "workers"}


def _key_of(flag: str) -> str:
    key = flag.lstrip("-").replace("-", "_")
    return FLAG_ALIASES.get(key, key)


def parse_overrides(tokens: Sequence[str], known: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """``['--lr', '1e-4', '--norm-embed', '--set', 'wd=0']`` -> ``{key: (raw value, source)}``.

    `known` maps key -> type; it decides how many values a flag takes: bools take none (an explicit
    ``true``/``false`` may follow), lists and tuples take every value up to the next ``--flag``, others one.
    ``--no-<bool-key>`` sets a bool to false. Values stay raw here; :func:`coerce` types them.
    """
    out: dict[str, tuple[Any, str]] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--set" or tok.startswith("--set="):
            if tok == "--set":
                if i + 1 >= len(tokens):
                    raise ConfigError("--set needs key=value")
                assignment, i = tokens[i + 1], i + 2
            else:
                assignment, i = tok[len("--set="):], i + 1
            if "=" not in assignment:
                raise ConfigError(f"--set {assignment!r}: expected key=value")
            key, raw = assignment.split("=", 1)
            key = _key_of(key.strip())
            _require_known(key, known, f"--set {assignment}")
            out[key] = (yaml.safe_load(raw) if raw.strip() else raw, f"--set {assignment}")
            continue
        if not tok.startswith("-") or tok in ("-", "--"):
            raise ConfigError(f"unexpected argument {tok!r}: overrides look like --key value or --set key=value")
        name, inline = (tok.split("=", 1) + [None])[:2] if "=" in tok else (tok, None)
        key = _key_of(name)
        source = f"{name}"
        i += 1
        if key not in known and key.startswith("no_") and known.get(key[3:]) is bool:
            out[key[3:]] = (False, source)
            continue
        _require_known(key, known, source)
        tp = known[key]
        if inline is not None:
            out[key] = (inline, source)
            continue
        values = []
        while i < len(tokens) and not (tokens[i].startswith("--") or _is_short_flag(tokens[i])):
            values.append(tokens[i])
            i += 1
        if tp is bool:
            if not values:
                out[key] = (True, source)
            elif len(values) == 1:
                out[key] = (values[0], source)
            else:
                raise ConfigError(f"{source}: is a switch, got several values {values}")
        elif _is_sequence_type(tp):
            if not values:
                raise ConfigError(f"{source}: needs at least one value")
            out[key] = (values, source)
        else:
            if len(values) != 1:
                raise ConfigError(f"{source}: expects one value, got {values or 'none'}")
            out[key] = (values[0], source)
    return out


def _is_short_flag(tok: str) -> bool:
    # '-j' is a flag; '-1' or '-1e-3' is a negative number value.
    return len(tok) >= 2 and tok[0] == "-" and tok[1].isalpha()


def _is_sequence_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence_type(a) for a in typing.get_args(tp))
    return origin in (list, tuple)


def _require_known(key: str, known: Mapping[str, Any], source: str) -> None:
    if key not in known:
        close = difflib.get_close_matches(key, list(known), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{source}: unknown config key {key!r}{hint}; `lavila train --list-keys` lists them all")


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


def resolve_task_name(task: str | None, model: str, source: str = "config") -> str:
    """The explicit task, else the one implied by the model's kind (dual encoder or narrator)."""
    if task:
        return task
    from lavila.models.registry import MODEL_CONFIGS

    cfg = MODEL_CONFIGS.get(model)
    if cfg is None:
        raise ConfigError(f"key 'model' ({source}): unknown model {model!r}; `lavila models` lists them")
    return {"dual_encoder": "dual_encoder", "vclm": "narrator"}.get(cfg.kind, cfg.kind)


def _options_class(task: Any, model: Any, sources: Mapping[str, str] | None = None) -> type:
    from lavila.train.tasks import get_task_class

    sources = sources or {}
    name = resolve_task_name(str(task) if task else None, str(model), sources.get("model", "config"))
    try:
        return get_task_class(name).Options
    except KeyError as err:
        raise ConfigError(f"key 'task' ({sources.get('task', 'config')}): {err.args[0]}") from None


def _peek(tokens: Sequence[str], key: str) -> str | None:
    """The last value given to --key / --set key=... on the command line (before full parsing)."""
    found = None
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok == f"--{key}" and nxt is not None:
            found = nxt
        elif tok.startswith(f"--{key}="):
            found = tok.split("=", 1)[1]
        elif tok == "--set" and nxt is not None and nxt.startswith(f"{key}="):
            found = nxt.split("=", 1)[1]
        elif tok.startswith(f"--set={key}="):
            found = tok[len(f"--set={key}="):]
    return found


def build_config(values: Mapping[str, Any], sources: Mapping[str, str] | None = None,
                 cli_keys: frozenset[str] = frozenset(), options_cls: type | None = None) -> TrainConfig:
    """Typed, checked TrainConfig (+ task options) from a flat mapping; `sources` says where each key came from."""
    sources = dict(sources or {})

    def where(key: str) -> str:
        return f"key {key!r} ({sources.get(key, 'config')})"

    if options_cls is None:
        options_cls = _options_class(coerce(values.get("task"), str | None, where("task")),
                                     coerce(values.get("model", TrainConfig.model), str, where("model")), sources)
    train_hints, opt_hints = _hints(TrainConfig), _hints(options_cls)
    train_fields = {f.name: f for f in config_fields(TrainConfig)}
    opt_fields = {f.name: f for f in config_fields(options_cls)}
    overlap = set(train_fields) & set(opt_fields)
    if overlap:
        raise ConfigError(f"task options {options_cls.__name__} redefine trainer keys {sorted(overlap)}")
    known = {**train_fields, **opt_fields}
    train_kw: dict[str, Any] = {}
    opt_kw: dict[str, Any] = {}
    for key, value in values.items():
        _require_known(key, known, sources.get(key, "config"))
        hints = train_hints if key in train_fields else opt_hints
        typed = coerce(value, hints[key], where(key))
        _check(typed, known[key], where(key))
        (train_kw if key in train_fields else opt_kw)[key] = typed
    try:
        opts = options_cls(**opt_kw)
    except TypeError as err:
        raise ConfigError(f"task options: {err}") from err
    cfg = TrainConfig(**train_kw, task_cfg=opts, cli_keys=frozenset(cli_keys))
    if cfg.task is None:
        cfg.task = resolve_task_name(None, cfg.model)
    _cross_checks(cfg, where)
    return cfg


def _cross_checks(cfg: TrainConfig, where: Any) -> None:
    if cfg.lr_end > cfg.lr and not cfg.fix_lr:
        raise ConfigError(f"{where('lr_end')}: {cfg.lr_end} is above lr={cfg.lr}")
    if cfg.warmup_epochs > cfg.epochs and not cfg.fix_lr:
        raise ConfigError(f"{where('warmup_epochs')}: {cfg.warmup_epochs} exceeds epochs={cfg.epochs}")
    b1, b2 = cfg.betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ConfigError(f"{where('betas')}: each beta must be in [0, 1), got {cfg.betas}")
    if cfg.use_zero and cfg.use_fsdp:
        raise ConfigError(f"{where('use_fsdp')}: use either use_zero or use_fsdp, not both")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"{where('device')}: expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    validate = getattr(cfg.task_cfg, "validate", None)
    if validate is not None:
        validate(cfg, where)


def load_config(path: str | Path | None, overrides: Sequence[str] = (),
                base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Recipe file (optional) + `base` values (programmatic) + command-line `overrides`, in that order."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        for k, v in read_yaml(path).items():
            values[str(k)] = v
            sources[str(k)] = str(path)
    for k, v in (base or {}).items():
        values[k], sources[k] = v, "defaults"
    # The override flags are typed by the task's options, so find the task first (a --task/--model override wins).
    peeked = {k: _peek(overrides, k) for k in ("task", "model")}
    task = peeked["task"] or values.get("task")
    model = peeked["model"] or values.get("model", TrainConfig.model)
    options_cls = _options_class(task, model, {k: (f"--{k}" if v else sources.get(k, "default"))
                                               for k, v in peeked.items()})
    known = {**_hints(TrainConfig), **_hints(options_cls)}
    known = {k: v for k, v in known.items() if k not in ("task_cfg", "cli_keys")}
    parsed = parse_overrides(list(overrides), known)
    for key, (raw, source) in parsed.items():
        values[key], sources[key] = raw, source
    return build_config(values, sources, frozenset(parsed), options_cls)


def describe_keys(options_cls: type | None = None) -> str:
    """Human-readable table of every key: type, default, help (``lavila train --list-keys``)."""
    lines = []
    for title, cls in (("trainer", TrainConfig), ("task", options_cls)):
        if cls is None:
            continue
        hints = _hints(cls)
        lines.append(f"# {title} keys ({cls.__name__})")
        for f in config_fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            flag = "--" + f.name.replace("_", "-")
            lines.append(f"  {flag:<30} {_type_name(hints[f.name]):<22} default {default!r:<24} {f.metadata['help']}")
    return "\n".join(lines)
