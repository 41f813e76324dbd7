"""One configuration path for every ``lavila`` verb: a dataclass, an optional YAML file, command-line flags.

A verb's job is a dataclass. :func:`parse` fills it in three layers, later ones winning:

1. the dataclass defaults;
2. an optional YAML recipe (a flat mapping ``key: value``; keys are the field names, e.g. ``batch_size: 32``), then
   programmatic ``defaults`` and ``--set key=value`` assignments (value parsed as YAML);
3. command-line flags, parsed by `tyro <https://brentyi.github.io/tyro/>`_ with layer 2 as its defaults, so that
   ``--help`` shows the values that will actually be used.

Flags are spelled as in the reference code: ``--batch-size`` and ``--batch_size`` alike, ``--use_volta32``,
``--metadata-aux a.pkl b.pkl`` (lists), ``--norm-embed``/``--no-norm-embed`` or ``--norm-embed false`` (switches),
``--betas 0.9 0.98`` (tuples), ``--clip-grad-value none`` (optional values), short aliases such as ``-j 4``
(declared with ``option(aliases=...)``) and negative numbers as values. Prefixes are *not* accepted: a 32-GPU job
started with ``--step 10`` must fail at once rather than silently mean ``--steps 10``. ``--list-keys`` prints every
key with its type, default and help.

Every mistake is a one-line :class:`~lavila.errors.ConfigError` naming the key and where its value came from (the
file or the flag): an unknown flag or key gets a "did you mean" from :mod:`difflib` before tyro is even called
(tyro's own messages are multi-line boxes), and tyro's parse failures are translated to the same one-line form.

Checks are declared once, on the dataclass: ``typing.Literal`` for choices (tyro enforces them on flags, this
module on file values), ``option(min=..., positive=True)`` for ranges, and an optional ``validate(where)`` method
for rules that involve several keys (``where(key)`` gives ``"key 'lr' (--lr)"`` for its error messages).

This module is generic: it knows nothing about training or any other verb.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import tyro
import yaml
from tyro.constructors import PrimitiveConstructorSpec

from lavila.errors import ConfigError

T = TypeVar("T")
Where = Callable[[str], str]

__all__ = [
    "ConfigError",
    "Key",
    "YamlMapping",
    "Where",
    "coerce",
    "config_keys",
    "describe_keys",
    "option",
    "parse",
    "read_yaml",
    "to_plain",
]


def option(default: Any = dataclasses.MISSING, help: str = "", *, min: float | None = None,
           positive: bool = False, default_factory: Any = dataclasses.MISSING,
           aliases: Sequence[str] = ()) -> Any:
    """A dataclass field with its help text, range checks and extra flag spellings.

    ``help`` is what ``--help`` and ``--list-keys`` show (a field docstring works too when ``help`` is empty).
    ``aliases`` are extra spellings such as the reference's ``-j`` for ``--workers``; for a switch, an alias
    starting with ``--no-`` turns it off (``--no-cache`` for ``use_cache``); ``--flag=value`` declares a flag that
    takes no value and sets this key to `value` (``--submit=submitit`` for ``launcher``).
    """
    meta: dict[str, Any] = {"min": min, "positive": positive, "aliases": tuple(aliases)}
    if help:
        shown = [a.replace("=", " = ", 1) for a in aliases]
        meta["help"] = help + (f" (also {', '.join(shown)})" if aliases else "")
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _yaml_mapping(args: list[str]) -> dict[str, Any]:
    value = yaml.safe_load(args[0]) if args[0].strip() else {}
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping like {{key: value}}, got {args[0]!r}")
    return value


YamlMapping = Annotated[dict[str, Any], PrimitiveConstructorSpec(
    nargs=1, metavar="{KEY: VALUE}", instance_from_str=_yaml_mapping, is_instance=lambda v: isinstance(v, dict),
    str_from_instance=lambda v: [yaml.safe_dump(v, default_flow_style=True).strip()])]
"""A mapping given on the command line as one YAML string: ``--model-overrides '{img_size: 32}'``."""


# ---------------------------------------------------------------------------------------------------------------
# The keys of a dataclass
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key: a field of the dataclass, or of a dataclass nested in it (flattened)."""

    name: str
    path: tuple[str, ...]  # attribute path from the top-level instance
    type: Any  # resolved, Annotated[] stripped
    field: dataclasses.Field
    owner: type
    positional: bool = False

    @property
    def flag(self) -> str:
        return self.name.upper() if self.positional else "--" + self.name.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        return _strip_optional(self.type) is bool

    @property
    def optional(self) -> bool:
        return _allows_none(self.type)

    @property
    def required(self) -> bool:
        return self.field.default is dataclasses.MISSING and self.field.default_factory is dataclasses.MISSING

    @property
    def help(self) -> str:
        return self.field.metadata.get("help") or _field_docs(self.owner).get(self.name, "")

    def default(self) -> Any:
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return dataclasses.MISSING


def _strip_annotated(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    extras: tuple[Any, ...] = ()
    while typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        tp, extras = args[0], extras + tuple(args[1:])
    return tp, extras


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _allows_none(tp: Any) -> bool:
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if _allows_none(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _is_positional_marker(marker: Any) -> bool:
    return marker is typing.get_args(tyro.conf.Positional[int])[1]


@functools.cache
def config_keys(cls: type) -> dict[str, Key]:
    """Every key of `cls` by name; the fields of nested dataclasses are flattened (their flags have no prefix)."""
    out: dict[str, Key] = {}
    _collect(cls, (), out)
    return out


@functools.cache
def _groups(cls: type) -> dict[str, type]:
    """Nested dataclass fields (name -> class): a YAML file may give them as a mapping."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        tp, _ = _strip_annotated(hints[f.name])
        if f.init and dataclasses.is_dataclass(tp):
            out[f.name] = tp
            out.update(_groups(tp))
    return out


def _collect(cls: type, prefix: tuple[str, ...], out: dict[str, Key]) -> None:
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, extras = _strip_annotated(hints[f.name])
        if dataclasses.is_dataclass(tp):
            _collect(tp, prefix + (f.name,), out)
            continue
        if f.name in out:
            raise TypeError(f"{cls.__name__}.{f.name}: the key {f.name!r} is already defined by "
                            f"{out[f.name].owner.__name__}")
        owner = next((k for k in cls.__mro__ if f.name in getattr(k, "__annotations__", {})), cls)
        out[f.name] = Key(f.name, prefix + (f.name,), tp, f, owner, any(_is_positional_marker(m) for m in extras))


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (a string literal right after the field), the help of fields declared without option()."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


# ---------------------------------------------------------------------------------------------------------------
# Values from files: type coercion
# ---------------------------------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


def _type_name(tp: Any) -> str:
    tp, _ = _strip_annotated(tp)
    origin = typing.get_origin(tp)
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML, or a string from the command line) to type `tp`; errors name `where`."""
    tp, _ = _strip_annotated(tp)
    from_cli = isinstance(value, str)
    origin = typing.get_origin(tp)
    if _is_union(tp):
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
    if origin is typing.Literal:
        for choice in typing.get_args(tp):
            try:
                if coerce(value, type(choice), where) == choice:
                    return choice
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")
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
            with contextlib.suppress(ValueError):
                return int(value.strip())
            with contextlib.suppress(ValueError):
                f = float(value)
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if from_cli:
            with contextlib.suppress(ValueError):
                return float(value.strip())
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. a comment or partition that YAML read as a number
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        if isinstance(value, str | Path):
            return tp(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    if origin in (list, tuple) and typing.get_args(tp)[-1:] == (Ellipsis,) or origin is list:
        item = (typing.get_args(tp) or (Any,))[0]
        items = value if isinstance(value, list | tuple) else [value]
        out = [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
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


def to_plain(value: Any) -> Any:
    """A value as YAML writes it back: tuples as lists, paths as strings, dataclasses as mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a mapping. Anything else (a video passed by mistake, a list, bad YAML) is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise ConfigError(f"{path}: not a YAML config file (binary content); give a .yaml recipe")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at} ({problem})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _merge(values: dict[str, Any], sources: dict[str, str], given: Mapping[str, Any], source: str,
           cls: type) -> None:
    """Type-check `given` (file, defaults or --set values) against the keys of `cls` and merge it into `values`."""
    keys, groups = config_keys(cls), _groups(cls)
    for raw_key, value in given.items():
        key = str(raw_key)
        if key in groups and isinstance(value, Mapping):
            nested = {**{k: v for k, v in value.items()}}
            unknown = [k for k in nested if k not in config_keys(groups[key]) and k not in _groups(groups[key])]
            if unknown:
                names = list(config_keys(groups[key]))
                raise ConfigError(f"{source}: unknown key {key}.{unknown[0]!r}{_did_you_mean(str(unknown[0]), names)}")
            _merge(values, sources, nested, source, cls)
            continue
        if key not in keys:
            raise ConfigError(f"{source}: unknown key {key!r}{_did_you_mean(key, list(keys))}")
        values[key] = coerce(value, keys[key].type, f"key {key!r} ({source})")
        sources[key] = source


def _take_set(argv: list[str]) -> tuple[list[str], list[tuple[str, str, Any]]]:
    """Remove ``--set key=value`` / ``--set=key=value`` from argv; returns (rest, [(assignment, key, value)])."""
    rest: list[str] = []
    sets: list[tuple[str, str, Any]] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            rest.extend(argv[i:])
            break
        if tok == "--set" or tok.startswith("--set="):
            if tok == "--set":
                if i + 1 >= len(argv):
                    raise ConfigError("--set needs key=value")
                assignment, i = argv[i + 1], i + 2
            else:
                assignment, i = tok[len("--set="):], i + 1
            if "=" not in assignment:
                raise ConfigError(f"--set {assignment}: expected key=value")
            key, raw = assignment.split("=", 1)
            key = key.strip().lstrip("-").replace("-", "_")
            sets.append((assignment, key, yaml.safe_load(raw) if raw.strip() else raw))
            continue
        rest.append(tok)
        i += 1
    return rest, sets


def _looks_like_flag(tok: str) -> bool:
    # '--x' and '-j' are flags; '-1' or '-1e-3' are negative numbers (values).
    return (tok.startswith("--") and len(tok) > 2) or (len(tok) >= 2 and tok[0] == "-" and tok[1].isalpha())


def _canonical(flag: str) -> str:
    return "--" + flag.lstrip("-").replace("_", "-") if flag.startswith("--") else flag


@dataclasses.dataclass
class _Tokens:
    args: list[str]  # what tyro gets
    sources: dict[str, str]  # key -> the flag as the user spelled it
    raw: dict[str, list[str]]  # key -> the value tokens given after its flag


@functools.cache
def _flag_table(cls: type) -> dict[str, tuple[Key, bool, str | None]]:
    """Every accepted spelling (canonical form) -> (key, negated, implied value)."""
    table: dict[str, tuple[Key, bool, str | None]] = {}
    for key in config_keys(cls).values():
        if key.positional:
            continue
        table[key.flag] = (key, False, None)
        if key.is_switch:
            table["--no-" + key.flag[2:]] = (key, True, None)
        for alias in key.field.metadata.get("aliases", ()):
            spelling, eq, implied = alias.partition("=")
            negated = key.is_switch and _canonical(spelling).startswith("--no-")
            table[_canonical(spelling)] = (key, negated, implied if eq else None)
    return table


def _normalize(argv: Sequence[str], cls: type, where: Where, out: _Tokens) -> _Tokens:
    """Check every flag against the dataclass (did-you-mean on typos) and rewrite the reference's spellings into
    the canonical ones tyro understands: aliases, ``--flag true/false``, ``none`` for optional values."""
    table = _flag_table(cls)
    has_positionals = any(k.positional for k in config_keys(cls).values())
    argv = list(argv)
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            out.args.extend(argv[i - 1:])
            break
        if not _looks_like_flag(tok) or tok in ("-h", "--help"):
            out.args.append(tok)
            continue
        name, eq, inline = tok.partition("=")
        entry = table.get(_canonical(name))
        if entry is None:
            raise ConfigError(f"unknown option {name}{_did_you_mean(_canonical(name), list(table))}")
        key, negated, implied = entry
        out.sources[key.name] = name
        if implied is not None:
            if eq:
                raise ConfigError(f"{name} takes no value (it means {key.flag} {implied})")
            if key.is_switch and not (key.optional or key.required):
                out.args.append(key.flag if implied.strip().lower() in _TRUE else "--no-" + key.flag[2:])
            else:
                out.args += [key.flag, implied]
            out.raw[key.name] = [implied]
            continue
        values = [inline] if eq else []
        if not eq:
            j = i
            while j < len(argv) and not _looks_like_flag(argv[j]) and argv[j] != "--":
                j += 1
            values = argv[i:j]
        out.raw[key.name] = values
        if key.is_switch:
            state = not negated
            if eq or (values and values[0].strip().lower() in _TRUE | _FALSE):
                word = values[0].strip().lower()
                if word not in _TRUE | _FALSE:
                    raise ConfigError(f"{where(key.name)}: is a switch; give true or false, got {values[0]!r}")
                state = (word in _TRUE) != negated
                i += 0 if eq else 1
            elif values and not has_positionals:
                raise ConfigError(f"{where(key.name)}: is a switch; give true or false after it (or "
                                  f"--no-{key.flag[2:]}), got {values[0]!r}")
            if key.optional or key.required:
                out.args += [key.flag, str(state)]
            else:
                out.args.append(key.flag if state else "--no-" + key.flag[2:])
            continue
        out.args.append(key.flag)
        if eq:
            values = [inline]
        if key.optional and len(values) == 1 and values[0].strip().lower() in _NONE:
            out.args.append("None")
            i += 0 if eq else 1
        elif eq:
            out.args.append(inline)
    return out


def _set_attr(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses too


def _assemble(cls: type, values: Mapping[str, Any], *, for_tyro: bool) -> Any:
    """An instance of `cls` from field defaults + `values` (flattened keys). For tyro's ``default=`` a required key
    without a value becomes ``tyro.MISSING`` (tyro then asks for it); otherwise it is a ConfigError."""
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _strip_annotated(hints[f.name])
        if dataclasses.is_dataclass(tp):
            base = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                    else f.default if f.default is not dataclasses.MISSING else None)
            inner = _assemble(tp, values, for_tyro=for_tyro)
            if base is not None:
                changed = {g.name: getattr(inner, g.name) for g in dataclasses.fields(tp)
                           if g.init and _touched(tp, g.name, values)}
                inner = dataclasses.replace(base, **changed) if changed else base
            kwargs[f.name] = inner
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif f.default is not dataclasses.MISSING:
            kwargs[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs[f.name] = f.default_factory()
        elif for_tyro:
            kwargs[f.name] = tyro.MISSING
        else:
            key = config_keys(cls).get(f.name)
            what = "argument" if key is not None and key.positional else "option"
            raise ConfigError(f"missing required {what} {key.flag if key else f.name}")
    if for_tyro:
        obj = object.__new__(cls)
        for name, value in kwargs.items():
            _set_attr(obj, name, value)
        return obj
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err


def _touched(cls: type, name: str, values: Mapping[str, Any]) -> bool:
    if name in values:
        return True
    groups = _groups(cls)
    return name in groups and any(k in values for k in config_keys(groups[name]))


def parse(cls: type[T], argv: Sequence[str] = (), *, prog: str = "lavila", yaml_path: str | Path | None = None,
          defaults: Mapping[str, Any] | None = None, description: str | None = None) -> T:
    """`cls` from its defaults, the optional YAML file, `defaults`, ``--set`` and the flags in `argv`.

    Raises :class:`ConfigError` (one line) for every mistake; ``--help`` and ``--list-keys`` print and raise
    ``SystemExit(0)``.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if yaml_path is not None:
        _merge(values, sources, read_yaml(yaml_path), str(yaml_path), cls)
    if defaults:
        _merge(values, sources, defaults, "defaults", cls)
    argv, sets = _take_set(list(argv))
    for assignment, key, value in sets:
        _merge(values, sources, {key: value}, f"--set {assignment}", cls)
    if "--list-keys" in argv[: argv.index("--") if "--" in argv else len(argv)]:
        print(describe_keys(cls, values))
        raise SystemExit(0)
    flag_sources: dict[str, str] = {}

    def where(key: str) -> str:
        k = config_keys(cls).get(key)
        if k is not None and k.positional and key not in sources:
            return f"argument {k.flag}"
        return f"key {key!r} ({flag_sources.get(key) or sources.get(key, 'default')})"

    tokens = _normalize(argv, cls, where, _Tokens([], flag_sources, {}))
    if tokens.args:
        instance = _run_tyro(cls, tokens, prog, _assemble(cls, values, for_tyro=True), where, description)
    else:
        instance = _assemble(cls, values, for_tyro=False)
    check_ranges(instance, where)
    _validate(instance, where)
    return instance


def _validate(instance: Any, where: Where) -> None:
    """Call the dataclass's ``validate(where)`` (or a plain ``validate()`` raising ValueError) if it has one."""
    validate = getattr(instance, "validate", None)
    if not callable(validate):
        return
    if inspect.signature(validate).parameters:
        validate(where)
        return
    try:
        validate()
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _run_tyro(cls: type[T], tokens: _Tokens, prog: str, default: Any, where: Where, description: str | None) -> T:
    keys = config_keys(cls)

    def key_of(argument: Any) -> str | None:
        if argument is None:
            return None
        name = getattr(getattr(argument, "field", None), "intern_name", None)
        if name in keys:
            return name
        entry = _flag_table(cls).get(_canonical(str(argument.display_name())))
        return entry[0].name if entry else None

    def on_error(event: Any) -> None:
        kind = type(event).__name__
        if kind == "MissingArgs":
            missing = [keys[n].flag if (n := key_of(a.arg)) else a.arg.display_name()
                       for a in event.missing_arguments]
            what = "argument" if all(n.isupper() for n in missing) else "option"
            raise ConfigError(f"missing required {what}{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        if kind == "UnrecognizedArgs":
            raise ConfigError(f"unexpected argument {event.tokens[0]!r}")
        key = key_of(getattr(event, "argument", None))
        at = f"{where(key)}: " if key else ""
        if kind == "InvalidChoice":
            choices = _choices(keys[key].type) if key else None
            raise ConfigError(f"{at}{event.value!r} is not one of {', '.join(map(str, choices or event.choices))}")
        if kind == "BadValue" and key:
            nargs = getattr(getattr(event.argument, "lowered", None), "nargs", None)
            raise ConfigError(f"{at}expected {nargs} values ({_type_name(keys[key].type)}), got "
                              f"{len(tokens.raw.get(key, []))}")
        if kind == "InstantiationFailure":
            if key and key in tokens.raw:
                coerce_error = _coerce_message(tokens.raw[key], keys[key].type, where(key))
                if coerce_error:
                    raise ConfigError(coerce_error)
            raise ConfigError(f"{at}{str(event.message).strip().splitlines()[0]}")
        raise ConfigError(f"{at}invalid arguments ({kind}); see --help")

    hook: Any = contextlib.nullcontext()
    with contextlib.suppress(ImportError, AttributeError):
        from tyro._errors import on_parse_error  # private but stable enough; without it tyro prints its own box

        hook = on_parse_error(on_error)
    with hook:
        try:
            return tyro.cli(cls, args=tokens.args, prog=prog, default=default, description=description,
                            config=(tyro.conf.OmitArgPrefixes, tyro.conf.PositionalMetavarFromFieldName))
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:  # raised by the dataclass itself (e.g. __post_init__)
            raise ConfigError(str(err)) from err


def _choices(tp: Any) -> tuple[Any, ...] | None:
    tp = _strip_optional(_strip_annotated(tp)[0])
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def _takes_many(tp: Any) -> bool:
    tp = _strip_optional(_strip_annotated(tp)[0])
    return typing.get_origin(tp) in (list, tuple)


def _coerce_message(raw: list[str], tp: Any, where: str) -> str | None:
    try:
        coerce(raw if _takes_many(tp) else (raw[0] if raw else None), tp, where)
    except ConfigError as err:
        return str(err)
    return None


def check_ranges(instance: Any, where: Where) -> None:
    """The ``option(min=..., positive=True)`` checks of every key (None = unset passes)."""
    for key in config_keys(type(instance)).values():
        value: Any = instance
        for name in key.path:
            value = getattr(value, name)
        meta = key.field.metadata
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if meta.get("positive") and not value > 0:
            raise ConfigError(f"{where(key.name)}: must be > 0, got {value!r}")
        if meta.get("min") is not None and value < meta["min"]:
            raise ConfigError(f"{where(key.name)}: must be >= {meta['min']}, got {value!r}")


def values_of(instance: Any) -> dict[str, Any]:
    """Flat ``{key: value}`` of an instance (nested dataclasses flattened), as a YAML recipe holds them."""
    out = {}
    for key in config_keys(type(instance)).values():
        value: Any = instance
        for name in key.path:
            value = getattr(value, name)
        out[key.name] = to_plain(value)
    return out


def describe_keys(cls: type, values: Mapping[str, Any] | None = None) -> str:
    """Every key of `cls`: flag, type, default (the file's value where one was given) and help."""
    values = values or {}
    lines = [f"# {cls.__name__}: YAML key = flag name ('-' or '_' alike); flags override the file"]
    for key in config_keys(cls).values():
        default = values.get(key.name, key.default())
        shown = "(required)" if default is dataclasses.MISSING else repr(to_plain(default))
        flag = key.flag + (" (positional)" if key.positional else "")
        lines.append(f"  {flag:<32} {_type_name(key.type):<24} default {shown:<24} {key.help}")
    return "\n".join(lines)


def iter_flags(cls: type) -> Iterator[str]:
    """Every accepted flag spelling of `cls` (canonical form), e.g. for completion or tests."""
    yield from _flag_table(cls)
