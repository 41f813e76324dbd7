"""The `lavila` command line.

Only wiring lives here: every verb is a module exposing ``configure_parser(parser)`` and ``run(args) -> int``.
Modules are imported lazily so that ``lavila models`` does not pay for importing the video decoder, and a
verb whose optional dependency is missing fails only when it is used.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help). The module owns its flags; this table owns the vocabulary.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lavila.demo", "the whole recipe on an embedded synthetic egocentric set (no data, no downloads)"),
    "models": ("lavila.models.registry", "list the model registry"),
    "conformance": ("lavila.conformance", "check this implementation against reference fixture files"),
    "train": ("lavila.train.cli", "pretrain / fine-tune a dual encoder or train a narrator"),
    "prepare-ego4d": ("lavila.data.prepare", "cut Ego4D videos into fixed-length, resized chunks"),
    "convert-metadata": ("lavila.data.metadata", "convert a metadata pickle to Parquet (or back)"),
    "narrate": ("lavila.narrate.narrate", "narrate a metadata file or your own videos with a narrator"),
    "rephrase": ("lavila.narrate.rephrase", "paraphrase human narrations with a T5 rephraser"),
    "eval": ("lavila.eval.zeroshot", "zero-shot evaluation on EK-100 MIR/CLS, Charades-Ego, EGTEA, EgoMCQ"),
    "eval-narrator": ("lavila.eval.nlg", "BLEU/METEOR/ROUGE-L/CIDEr of a narrator against human narrations"),
    "index": ("lavila.eval.search", "embed windows of a folder of videos for text search"),
    "search": ("lavila.eval.search", "search an index built by `lavila index` with free text"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lavila", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            module = importlib.import_module(module_name)
            configure = getattr(module, f"configure_{name.replace('-', '_')}_parser", None) or module.configure_parser
            configure(p)
            p.set_defaults(_module=module_name, _verb=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only=verb)
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(args._module)
    runner = getattr(module, f"run_{args._verb.replace('-', '_')}", None) or module.run
    return int(runner(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
