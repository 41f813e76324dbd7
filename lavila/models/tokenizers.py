"""Text tokenisers of LaViLa, selected by model name exactly as the reference does.

Three families exist (spec section 5):

* the OpenAI CLIP byte-level BPE (`SimpleTokenizer`) for every CLIP text tower. It is reimplemented here rather
  than borrowed from HF because the reference differs from ``CLIPTokenizer`` in ways that change ids: it runs
  ftfy + a double ``html.unescape``, and it *cuts* ``[SOT] + bpe + [EOT]`` to the context length without
  re-inserting EOT, so long captions lose their EOT and the text tower then pools at SOT;
* HF WordPiece (DistilBERT / BERT) for the ``*_DISTILBERT_BASE`` / ``*_BERT_*`` dual encoders, returning
  ``(ids, attention_mask)``;
* HF GPT-2 BPE for the narrator's decoder, wrapped as ``[bos] + ids[:ctx-2] + [eos]`` and padded with 0 (the
  token ``!``: the caption loss therefore ignores genuine ``!`` tokens, a reference quirk kept on purpose).

A single string gives 1-D tensors; a list gives ``[N, context_length]`` (the reference also squeezed a list of
length one to 1-D; we do not, so batch code never has to special-case a batch of one).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import ftfy
import regex
import torch

from lavila.errors import LavilaError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_ENV_VAR = "LAVILA_BPE_PATH"
# HF hub repository whose vocab.json/merges.txt are the same BPE as the reference's gz file. Only fetched on a
# user's machine when nothing local is found (never by the tests).
HF_CLIP_REPO = "openai/clip-vit-base-patch16"
# The CLIP vocabulary: 256 byte symbols, their `</w>` variants, 48894 merges, SOT, EOT = 49408 entries.
NUM_MERGES = 49152 - 256 - 2
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)

TextInput = str | Sequence[str]


# --------------------------------------------------------------------------------------------------------------
# CLIP BPE
# --------------------------------------------------------------------------------------------------------------


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode char table of GPT-2/CLIP, so BPE never sees whitespace/control characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clean_text(text: str) -> str:
    """The reference's text normalisation: ftfy, html-unescape twice, collapse whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip()
    return text.lower()


def _missing_bpe_message(tried: list[str]) -> str:
    return (
        "CLIP BPE vocabulary not found (tried: " + ", ".join(tried) + "). Get it in one of these ways:\n"
        f"  * pass bpe_path=... or set {BPE_ENV_VAR}=/path/to/{BPE_FILENAME} (the file bundled with OpenAI CLIP, "
        "open_clip and the LaViLa repository: https://github.com/openai/CLIP/raw/main/clip/" + BPE_FILENAME + ");\n"
        f"  * or point it at a HF CLIP tokenizer folder holding vocab.json + merges.txt, e.g. "
        f"`hf download {HF_CLIP_REPO} vocab.json merges.txt --local-dir clip_tok`, then "
        f"{BPE_ENV_VAR}=clip_tok;\n"
        "  * or allow network access once so it can be fetched from the HF hub automatically."
    )


def _bundled_copies() -> list[Path]:
    """Copies of the gz file shipped inside other installed packages (open_clip, OpenAI clip), found without import."""
    found = []
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / BPE_FILENAME
            if candidate.is_file():
                found.append(candidate)
    return found


def resolve_bpe_path(bpe_path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Where the CLIP merges live: argument, then $LAVILA_BPE_PATH, then bundled copies, then the HF hub.

    An explicit argument or environment value that does not exist is an error rather than a fall-through, so a
    typo never silently picks a different vocabulary.
    """
    for source, value in (("bpe_path", bpe_path), (BPE_ENV_VAR, os.environ.get(BPE_ENV_VAR))):
        if value:
            path = Path(value).expanduser()
            if not path.exists():
                message = f"{source}={value}: no such file or folder.\n" + _missing_bpe_message([str(path)])
                raise FileNotFoundError(message)
            return path
    tried = [f"${BPE_ENV_VAR} (unset)"]
    bundled = _bundled_copies()
    if bundled:
        return bundled[0]
    tried.append("open_clip/clip packages")
    if download:
        try:
            from huggingface_hub import hf_hub_download

            merges = hf_hub_download(HF_CLIP_REPO, "merges.txt")
            hf_hub_download(HF_CLIP_REPO, "vocab.json")
            return Path(merges).parent
        except Exception as err:  # any hub failure (offline, no access) means "not available here"
            tried.append(f"HF hub {HF_CLIP_REPO} ({type(err).__name__})")
    raise FileNotFoundError(_missing_bpe_message(tried))


def _read_merges(path: Path) -> tuple[list[tuple[str, str]], Path | None]:
    """Merges from a CLIP gz file, a plain merges.txt, or a folder holding either; also a vocab.json if present."""
    vocab_json = None
    if path.is_dir():
        if (path / BPE_FILENAME).is_file():
            path = path / BPE_FILENAME
        elif (path / "merges.txt").is_file():
            vocab_json = path / "vocab.json" if (path / "vocab.json").is_file() else None
            path = path / "merges.txt"
        else:
            raise FileNotFoundError(f"{path}: folder holds neither {BPE_FILENAME} nor merges.txt")
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        lines = raw.decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise ValueError(f"{path}: cannot read BPE merges ({err})") from err
    # Both formats start with a header line holding '#version'; the reference then takes exactly NUM_MERGES lines.
    if not lines or "#version" not in lines[0]:
        raise ValueError(f"{path}: not a BPE merges file (its first line should hold '#version: ...')")
    body = lines[1 : NUM_MERGES + 1]
    merges = []
    for row, line in enumerate(body, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: line {row} is not a merge pair: {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != NUM_MERGES:
        raise ValueError(f"{path}: {len(merges)} merges, the CLIP vocabulary needs {NUM_MERGES}")
    return merges, vocab_json


def pad_rows(texts: TextInput, context_length: int, row: Callable[[str, int], list[int]]) -> torch.Tensor:
    """Zero-padded ``[N, context_length]`` ids from ``row(text, context_length)``; a plain string gives 1-D."""
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = row(text, context_length)
        result[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result[0] if single else result


class SimpleTokenizer:
    """OpenAI CLIP's BPE tokenizer with LaViLa's call convention (`[SOT] + bpe + [EOT]`, cut, zero-padded)."""

    def __init__(self, bpe_path: str | os.PathLike | None = None, context_length: int = 77) -> None:
        path = resolve_bpe_path(bpe_path)
        merges, vocab_json = _read_merges(path)
        self.bpe_path = path
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(m) for m in merges)
        vocab.extend([SOT_TEXT, EOT_TEXT])
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        if vocab_json is not None:
            self._verify_vocab_json(vocab_json)
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache: dict[str, str] = {SOT_TEXT: SOT_TEXT, EOT_TEXT: EOT_TEXT}
        self.sot_token_id = self.encoder[SOT_TEXT]
        self.eot_token_id = self.encoder[EOT_TEXT]
        self.bos_token_id, self.eos_token_id = self.sot_token_id, self.eot_token_id  # one naming for every kind
        self.pad_token_id = 0
        self.vocab_size = len(self.encoder)

    def _verify_vocab_json(self, vocab_json: Path) -> None:
        # HF folders ship both files; ids come from the merges order, so refuse a vocab.json that disagrees.
        try:
            given = json.loads(vocab_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{vocab_json}: unreadable vocab.json ({err})") from err
        if given != self.encoder:
            raise ValueError(f"{vocab_json}: ids disagree with the vocabulary built from merges.txt next to it")

    def bpe(self, token: str) -> str:
        """Greedy lowest-rank merging of one pre-token; returns the pieces joined by spaces (cached)."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:], strict=True))
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """BPE ids of one string, without SOT/EOT."""
        ids: list[int] = []
        for token in CLIP_PATTERN.findall(clean_text(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ids; `skip_special_tokens` drops SOT/EOT and the zero padding (which is also `!`, id 0)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in (self.sot_token_id, self.eot_token_id, self.pad_token_id)]
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: TextInput, context_length: int | None = None) -> torch.Tensor:
        # The reference cuts without re-inserting EOT: a caption longer than context-2 has no EOT at all.
        return pad_rows(texts, context_length or self.context_length,
                        lambda text, n: ([self.sot_token_id] + self.encode(text) + [self.eot_token_id])[:n])


# --------------------------------------------------------------------------------------------------------------
# HF tokenisers
# --------------------------------------------------------------------------------------------------------------


class HFWordPieceTokenizer:
    """DistilBERT/BERT ids and float attention mask, cut to the context *after* [CLS]/[SEP] (long texts lose [SEP])."""

    def __init__(self, tokenizer: Any, context_length: int = 77) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_token_id = 0
        # The reference takes BOS/EOS as the ids an empty string produces ([CLS], [SEP]).
        empty = tokenizer("").input_ids
        self.bos_token_id, self.eos_token_id = (empty[0], empty[-1]) if len(empty) >= 2 else (None, None)

    def __call__(self, texts: TextInput, context_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        context_length = context_length or self.context_length
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        ids = torch.zeros(len(texts), context_length, dtype=torch.long)
        mask = torch.zeros(len(texts), context_length, dtype=torch.float32)
        for i, text in enumerate(texts):
            encoded = self.tokenizer(text)
            row = list(encoded.input_ids)[:context_length]
            row_mask = list(encoded.attention_mask)[:context_length]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.float32)
        return (ids[0], mask[0]) if single else (ids, mask)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


class HFGPT2Tokenizer:
    """GPT-2 ids as the narrator sees them: `[bos] + ids[:ctx-2] + [eos]` (or `ids[:ctx-1] + [eos]`), pad 0."""

    def __init__(self, tokenizer: Any, context_length: int = 77, add_bos: bool = True) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.add_bos = add_bos
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = 0

    def __call__(self, texts: TextInput, context_length: int | None = None) -> torch.Tensor:
        return pad_rows(texts, context_length or self.context_length, self._row)

    def _row(self, text: str, n: int) -> list[int]:
        body = list(self.tokenizer(text).input_ids)
        if self.add_bos:
            return [self.bos_token_id] + body[: n - 2] + [self.eos_token_id]
        return body[: n - 1] + [self.eos_token_id]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


# --------------------------------------------------------------------------------------------------------------
# Word-level vocabulary (the synthetic demo world: its models must travel with their words)
# --------------------------------------------------------------------------------------------------------------

WORD_VOCAB_FILE = "word_vocab.json"


class WordTokenizer:
    """Word-level tokenizer: ``[SOT] words [EOT]``, zero padded, EOT = the largest id (the CLIP text tower pools there).

    Lower-cases and splits on whitespace; unknown words map to ``<unk>``. The demo's synthetic world uses it; its
    words are saved beside the model (``word_vocab.json``) so the demo's models work with every verb.
    """

    PAD, UNK = 0, 1

    def __init__(self, words: Sequence[str], context_length: int = 16) -> None:
        self.words = list(words)
        self.index = {w: i + 2 for i, w in enumerate(self.words)}
        self.sot = self.bos_token_id = len(self.words) + 2
        self.eot = self.eos_token_id = self.sot + 1
        self.pad_token_id = self.PAD
        self.vocab_size = self.eot + 1
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.UNK) for w in text.lower().split()]

    def __call__(self, texts: TextInput, context_length: int | None = None) -> torch.Tensor:
        return pad_rows(texts, context_length or self.context_length,
                        lambda text, n: [self.sot] + self.encode(text)[: n - 2] + [self.eot])

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        inverse = {i: w for w, i in self.index.items()}
        return " ".join(inverse.get(int(i), "<unk>") for i in ids if int(i) not in (self.PAD, self.sot, self.eot))


Tokenizer = SimpleTokenizer | HFWordPieceTokenizer | HFGPT2Tokenizer | WordTokenizer


# --------------------------------------------------------------------------------------------------------------
# The row's tokenizer, checked
# --------------------------------------------------------------------------------------------------------------


class TokenizerError(LavilaError):
    """The tokenizer found is not the one the model was trained with (or none was found).

    A :class:`~lavila.errors.LavilaError` (so also a ``ValueError``): the CLI prints it as one line.
    """


# kind -> (environment variable with a local folder/file, files that folder must hold, HF class)
TOKENIZER_SOURCES: dict[str, tuple[str, str, str]] = {
    "clip_bpe": (BPE_ENV_VAR, f"{BPE_FILENAME} (or merges.txt + vocab.json)", ""),
    "wordpiece": ("LAVILA_BERT_TOKENIZER", "vocab.txt (BERT/DistilBERT uncased WordPiece)", "DistilBertTokenizer"),
    "gpt2": ("LAVILA_GPT2_TOKENIZER", "vocab.json + merges.txt (GPT-2 BPE)", "GPT2Tokenizer"),
    "word": ("", WORD_VOCAB_FILE, ""),
}


def _row(spec: Any) -> tuple[Any, Path | None]:
    """(ModelConfig, folder the tokenizer files may be in) of a row, a registry name or a pretrained folder."""
    from lavila.models.config import ModelConfig
    from lavila.models.registry import get_config, row_from_dict

    if isinstance(spec, ModelConfig):
        return spec, None
    path = Path(str(spec))
    if path.is_dir() and (path / "config.json").is_file():
        meta = json.loads((path / "config.json").read_text())
        return row_from_dict(meta["model_config"]), path
    return get_config(str(spec)), None


def _hf_from_folder(cls_name: str, folder: Path) -> Any:
    import transformers

    cls = transformers.PreTrainedTokenizerFast if (folder / "tokenizer.json").is_file() else getattr(
        transformers, cls_name)
    return cls.from_pretrained(str(folder))


def get_tokenizer(
    spec: Any,
    source: str | os.PathLike | None = None,
    *,
    context_length: int | None = None,
    checkpoint: dict[str, Any] | None = None,
    tokenizer: Any = None,
    add_bos: bool = True,
) -> Tokenizer:
    """The tokenizer of a model row (a :class:`ModelConfig`, a registry name or a ``save_pretrained`` folder).

    Files are looked for in ``source`` (``--tokenizer``: a folder or file), then a pretrained folder's own files,
    then the kind's environment variable, then the row's HF hub name (on a user's machine). ``checkpoint`` reads a
    tokenizer embedded in one of our checkpoints (``tokenizer_json``); ``tokenizer`` wraps a ready HF object.
    Whatever is found is checked against the row (vocabulary size, start/end ids): offline, transformers hands out
    an *empty* tokenizer instead of raising, which would tokenise every word as unknown without an error.
    """
    cfg, folder = _row(spec)
    tc = cfg.tokenizer
    ctx = context_length or cfg.context_length
    env, files, cls_name = TOKENIZER_SOURCES.get(tc.kind, ("", "", ""))
    if tc.kind not in TOKENIZER_SOURCES:
        raise TokenizerError(f"{cfg.name}: unknown tokenizer kind {tc.kind!r} ({', '.join(TOKENIZER_SOURCES)})")
    src = Path(source).expanduser() if source is not None else folder
    if src is None and env and os.environ.get(env):
        src = Path(os.environ[env]).expanduser()
    where = str(src) if src is not None else (tc.name or "(nowhere)")
    if src is not None and not src.exists():
        raise TokenizerError(f"{cfg.name}: tokenizer files not found at {src}; it must hold {files}")
    try:
        tok = _build(tc.kind, cls_name, src, tc.name, ctx, checkpoint, tokenizer, add_bos)
    except TokenizerError:
        raise
    except (OSError, ValueError) as err:
        raise TokenizerError(_missing_message(cfg.name, tc.kind, where, str(err).splitlines()[0])) from err
    problem = _mismatch(tok, cfg)
    if problem:
        raise TokenizerError(_missing_message(cfg.name, tc.kind, where, problem))
    return tok


def _build(kind: str, cls_name: str, src: Path | None, hub_name: str | None, ctx: int,
           checkpoint: dict[str, Any] | None, tokenizer: Any, add_bos: bool) -> Tokenizer:
    if kind == "clip_bpe":
        if tokenizer is not None:
            raise TokenizerError("the CLIP BPE tokenizer is built from its merges file: pass source=, not tokenizer=")
        return SimpleTokenizer(src, context_length=ctx)
    if kind == "word":
        if src is None or not (src if src.is_file() else src / WORD_VOCAB_FILE).is_file():
            raise OSError(f"{WORD_VOCAB_FILE} not found")
        data = json.loads((src if src.is_file() else src / WORD_VOCAB_FILE).read_text())
        return WordTokenizer(data["words"], context_length=ctx)
    if tokenizer is None and checkpoint and checkpoint.get("tokenizer_json") and src is None:
        tokenizer = hf_tokenizer_from_json(checkpoint["tokenizer_json"], checkpoint.get("tokenizer_bos", EOT_TEXT))
    if tokenizer is None and src is not None and src.suffix == ".json" and src.is_file():
        tokenizer = hf_tokenizer_from_json(src.read_text())
    if tokenizer is None:
        if src is not None:
            tokenizer = _hf_from_folder(cls_name, src)
        elif hub_name:
            import transformers

            tokenizer = getattr(transformers, cls_name).from_pretrained(hub_name)
        else:
            raise OSError("no tokenizer files given and the row names no HF tokenizer")
    if kind == "gpt2":
        return HFGPT2Tokenizer(tokenizer, context_length=ctx, add_bos=add_bos)
    return HFWordPieceTokenizer(tokenizer, context_length=ctx)


def _vocab_size(tok: Tokenizer) -> int:
    return tok.vocab_size if isinstance(tok, SimpleTokenizer | WordTokenizer) else len(tok.tokenizer)


def _mismatch(tok: Tokenizer, cfg: Any) -> str:
    """What is wrong with ``tok`` for row ``cfg`` ('' when it fits)."""
    tc = cfg.tokenizer
    size = _vocab_size(tok)
    if tc.vocab_size is not None and size != tc.vocab_size:
        return f"vocabulary of {size} tokens, the model's has {tc.vocab_size}"
    got = (getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None))
    want = (tc.bos_id, tc.eos_id)
    for label, g, w in (("start", got[0], want[0]), ("end", got[1], want[1])):
        if w is not None and g != w:
            return f"{label} id {g}, the model's is {w}"
    text_vocab = cfg.text.vocab_size
    if cfg.text.kind != "none" and size > text_vocab:
        return f"vocabulary of {size} tokens does not fit the text tower's {text_vocab} embeddings"
    return ""


def _missing_message(name: str, kind: str, where: str, problem: str) -> str:
    env, files, _ = TOKENIZER_SOURCES[kind]
    how = "pass --tokenizer DIR" + (f" or set {env}=DIR" if env else "")
    return (f"{name}: the {kind} tokenizer from {where} is not usable ({problem}); it needs {files}: {how} "
            "(docs/models.md, 'Tokenizers offline')")


def hf_tokenizer_from_json(tokenizer_json: str, bos_token: str = EOT_TEXT, eos_token: str | None = None) -> Any:
    """An HF fast tokenizer from a ``tokenizers`` JSON string (our narrator checkpoints embed their vocabulary)."""
    from tokenizers import Tokenizer as RawTokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=RawTokenizer.from_str(tokenizer_json), bos_token=bos_token,
                                   eos_token=eos_token or bos_token)


def save_tokenizer(tok: Tokenizer, folder: str | os.PathLike) -> list[Path]:
    """Write the files :func:`get_tokenizer` reads back from ``folder``; each file replaced atomically."""
    import shutil
    import tempfile

    from lavila.atomic import atomic_copy, atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(tok, WordTokenizer):
        atomic_write_text(folder / WORD_VOCAB_FILE, json.dumps({"words": tok.words}) + "\n")
        return [folder / WORD_VOCAB_FILE]
    if isinstance(tok, SimpleTokenizer):
        src = tok.bpe_path
        names = [BPE_FILENAME] if src.is_file() or (src / BPE_FILENAME).is_file() else ["merges.txt", "vocab.json"]
        out = []
        for name in names:
            from_path = src if src.is_file() else src / name
            if from_path.is_file():
                atomic_copy(from_path, folder / (BPE_FILENAME if src.is_file() else name))
                out.append(folder / name)
        return out
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tokenizer-") as tmp:
        tok.tokenizer.save_pretrained(tmp)
        out = []
        for f in sorted(Path(tmp).iterdir()):
            atomic_copy(f, folder / f.name)
            out.append(folder / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
    return out
