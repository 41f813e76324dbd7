"""The `lavila` command line.

Only wiring lives here: a table of verbs, each naming a module, the dataclass that holds the verb's options (its
job) and the function that runs it. Every verb's options go through the same path (:func:`lavila.config.parse`:
the dataclass defaults, an optional ``--config FILE`` YAML, then the flags through tyro), so ``--help``,
``--list-keys``, the accepted spellings and the one-line errors are the same everywhere. Modules are imported
lazily, so that ``lavila models`` does not pay for importing the video decoder and a verb whose optional
dependency is missing fails only when it is used.

Expected failures print one line ``lavila VERB: error: ...`` and exit with 1 (the job failed) or 2 (bad input or
arguments); a traceback only with ``--debug`` or ``LAVILA_DEBUG=1``. They are :class:`lavila.errors.LavilaError`
(every usage, configuration, metadata, annotation, tokenizer, checkpoint and shard error) and ``OSError`` — a
read-only or missing folder, a full disk (:class:`lavila.atomic.DiskFullError`), a file where a folder should be —
printed as ``<strerror>: <file>`` (exit 1). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from lavila.config import option, parse
from lavila.errors import JobInterrupted, LavilaError
from lavila.malloc import tune_cpu_allocator


class Verb(NamedTuple):
    module: str
    config: str  # a dataclass (parsed by lavila.config.parse) or a function (argv, prog) -> job
    job: str  # function(job dataclass) -> exit code (None = 0)
    help: str


COMMANDS: dict[str, Verb] = {
    "demo": Verb("lavila.demo", "DemoConfig", "run_demo",
                 "the whole recipe on an embedded synthetic egocentric set (no data, no downloads)"),
    "models": Verb("lavila.cli", "ModelsQuery", "list_models", "list the model registry"),
    "conformance": Verb("lavila.conformance", "ConformanceJob", "run_conformance",
                        "check this implementation against reference fixture files"),
    "train": Verb("lavila.train.cli", "parse_train", "run_train",
                  "pretrain / fine-tune a dual encoder or train a narrator"),
    "convert": Verb("lavila.models.convert", "ConvertJob", "run_convert",
                    "a released reference .pth (or ours) -> a pickle-free safetensors folder every verb loads"),
    "prepare-ego4d": Verb("lavila.data.prepare", "PrepareJob", "run_prepare",
                          "cut Ego4D videos into fixed-length, resized chunks"),
    "convert-metadata": Verb("lavila.data.metadata", "ConvertJob", "run_convert",
                             "convert a metadata pickle to Parquet (or back)"),
    "narrate": Verb("lavila.narrate.library", "NarrateJob", "run_narrate",
                    "narrate a metadata file or your own videos with a narrator"),
    "rephrase": Verb("lavila.narrate.rephrase", "RephraseJob", "run_rephrase",
                     "paraphrase human narrations with a T5 rephraser"),
    "eval": Verb("lavila.eval.zeroshot", "EvalJob", "run_eval",
                 "zero-shot evaluation on EK-100 MIR/CLS, Charades-Ego, EGTEA, EgoMCQ"),
    "eval-narrator": Verb("lavila.narrate.nlg", "NarratorEvalJob", "run_eval_narrator",
                          "BLEU/METEOR/ROUGE-L/CIDEr of a narrator against human narrations"),
    "index": Verb("lavila.eval.search", "IndexJob", "run_index",
                  "embed windows of a folder of videos for text search"),
    "search": Verb("lavila.eval.search", "SearchJob", "run_search",
                   "search an index built by `lavila index` with free text"),
    "app": Verb("lavila.app", "AppJob", "run_app",
                "local web app over an index: search, play the moment, narrate videos (pip install -e \".[app]\")"),
}

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a non-Python tool reports under `| head`


# ---------------------------------------------------------------------------------------------------- lavila models
@dataclass
class ModelsQuery:
    """List the model registry (name, kind, tower sizes)."""

    kind: Literal["dual_encoder", "vclm"] | None = option(None, "only list this kind")


def list_models(query: ModelsQuery) -> int:
    from lavila.models.registry import MODEL_CONFIGS

    header = f"{'name':<52} {'kind':<12} {'img':>4} {'patch':>5} {'width':>5} {'depth':>5} {'text':<10} " \
             f"{'text_w':>6} {'xattn_freq':>10}"
    print(header)
    print("-" * len(header))
    for cfg in MODEL_CONFIGS.values():
        if query.kind and cfg.kind != query.kind:
            continue
        v, t = cfg.vision, cfg.text
        freq = str(cfg.cross_attn_freq) if cfg.kind == "vclm" else "-"
        print(f"{cfg.name:<52} {cfg.kind:<12} {v.img_size:>4} {v.patch_size:>5} {v.width:>5} {v.layers:>5} "
              f"{t.kind:<10} {t.width:>6} {freq:>10}")
    return 0


# ------------------------------------------------------------------------------------------------------- dispatch
def overview() -> str:
    lines = ["usage: lavila [--debug] COMMAND [--config FILE] [OPTIONS]", "", __doc__.splitlines()[0], "",
             "commands:"]
    lines += [f"  {name:<18} {verb.help}" for name, verb in COMMANDS.items()]
    lines += ["", "`lavila COMMAND --help` shows a command's options; `--list-keys` lists them with types and "
              "defaults.", "--debug (or LAVILA_DEBUG=1) shows tracebacks of expected errors."]
    return "\n".join(lines)


def _take_value_flag(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """Remove ``flag VALUE`` / ``flag=VALUE`` (before any ``--``) from argv."""
    rest: list[str] = []
    value = None
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            rest.extend(argv[i:])
            break
        if tok == flag:
            if i + 1 >= len(argv):
                from lavila.errors import ConfigError

                raise ConfigError(f"{flag} needs a file")
            value, i = argv[i + 1], i + 2
            continue
        if tok.startswith(flag + "="):
            value, i = tok.split("=", 1)[1], i + 1
            continue
        rest.append(tok)
        i += 1
    return rest, value


def build_job(verb: str, argv: list[str]) -> tuple[Any, Any]:
    """(job function, parsed job dataclass) for `verb` and its arguments."""
    spec = COMMANDS[verb]
    module = importlib.import_module(spec.module)
    target = getattr(module, spec.config)
    prog = f"lavila {verb}"
    if isinstance(target, type):
        argv, config_file = _take_value_flag(argv, "--config")
        job = parse(target, argv, prog=prog, yaml_path=config_file)
    else:
        job = target(argv, prog=prog)
    return getattr(module, spec.job), job


def _debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    env = os.environ.get("LAVILA_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    end = argv.index("--") if "--" in argv else len(argv)
    flagged = "--debug" in argv[:end]
    return [t for i, t in enumerate(argv) if not (i < end and t == "--debug")], env or flagged


def _silence_stdout() -> None:
    """After EPIPE (``lavila models | head``), point stdout at /dev/null so the exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def describe_os_error(err: OSError) -> str:
    """``<strerror>: <file>`` (``-> <file2>`` for a rename), one line: what failed and where, without the
    ``[Errno N]`` and quotes of ``str(OSError)``; the error's own text when it names no file."""
    if err.strerror and err.filename is not None:
        text = f"{err.strerror}: {os.fsdecode(err.filename)}"
        if err.filename2 is not None:
            text += f" -> {os.fsdecode(err.filename2)}"
        return text
    text = err.strerror or str(err) or type(err).__name__
    return " ".join(text.split())  # one line even when a library's message has several


def main(argv: list[str] | None = None) -> int:
    argv, debug = _debug_requested(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0 if argv else 2
    verb = argv[0]
    if verb not in COMMANDS:
        close = difflib.get_close_matches(verb, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"lavila: error: unknown command {verb!r}{hint}; `lavila --help` lists them", file=sys.stderr)
        return 2
    try:
        run, job = build_job(verb, argv[1:])
        tune_cpu_allocator()  # before the job allocates anything large; see lavila.malloc
        code = run(job)
        sys.stdout.flush()
        return int(code or 0)
    except SystemExit as exc:  # --help / --list-keys (0), or a verb that exits on purpose
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"lavila {verb}: interrupted", file=sys.stderr)
        return 130
    except JobInterrupted as err:  # saved, then stopped: where, what was saved, how to resume
        if debug:
            raise
        print(f"lavila {verb}: {err}", file=sys.stderr)
        return err.exit_code
    except LavilaError as err:
        if debug:
            raise
        print(f"lavila {verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # after BrokenPipeError: the environment refused a read or write (EROFS, ENOSPC, ...)
        if debug:
            raise
        print(f"lavila {verb}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
