"""Tokenisers: CLIP BPE against the reference fixture, and the HF wrappers with tiny local vocabularies (no hub)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from lavila.conformance.tokenizer import check_tokenizer
from lavila.models import get_config
from lavila.models import tokenizers as tk
from lavila.models.tokenizers import SimpleTokenizer, TokenizerError, clean_text, get_tokenizer
from tests.conftest import reference_file

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def bpe_path():
    return reference_file("bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="module")
def clip_tok(bpe_path):
    return SimpleTokenizer(bpe_path)


@pytest.fixture(scope="module")
def fixture():
    return json.loads(reference_file("tokenizer_clip_public.json").read_text())


def test_reference_ids_exact(clip_tok, fixture):
    ids = clip_tok(fixture["strings"], context_length=fixture["context_length"])
    assert ids.dtype == torch.long and list(ids.shape) == fixture["shape"]
    assert ids.tolist() == fixture["token_ids"]
    assert ids.argmax(-1).tolist() == fixture["eot_position_argmax"]


def test_conformance_checker_passes_on_public_fixture():
    checks = check_tokenizer(reference_file("tokenizer_clip_public.json"))
    assert {c.check for c in checks} >= {"token_ids", "eot_position_argmax", "has_eot", "special_ids"}
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_conformance_checker_detects_a_wrong_id(tmp_path, fixture, bpe_path, monkeypatch):
    broken = dict(fixture)
    broken["token_ids"] = [list(row) for row in fixture["token_ids"]]
    broken["token_ids"][0][1] += 1
    path = tmp_path / "tokenizer_clip_broken.json"
    path.write_text(json.dumps(broken))
    monkeypatch.setenv(tk.BPE_ENV_VAR, str(bpe_path))  # no BPE file beside this copy
    by_name = {c.check: c for c in check_tokenizer(path)}
    assert not by_name["token_ids"].ok and by_name["token_ids"].max_abs_err == 1


def test_call_conventions(clip_tok):
    one = clip_tok("a video")
    assert one.shape == (77,)
    assert one[:4].tolist() == [SOT, *clip_tok.encode("a video"), EOT][:4]
    assert clip_tok(["a video"]).shape == (1, 77)  # a list stays batched
    short = clip_tok("c", context_length=5)
    assert short.tolist() == [SOT, clip_tok.encoder["c</w>"], EOT, 0, 0]


def test_truncation_drops_eot(clip_tok):
    text = " ".join(["knife"] * 10)  # "knife" is a single BPE token
    ids = clip_tok(text, context_length=6)
    assert ids.tolist() == [SOT] + [clip_tok.encoder["knife</w>"]] * 5
    assert EOT not in ids.tolist() and int(ids.argmax()) == 0  # the text tower would pool at SOT


def test_special_literals_and_cleaning(clip_tok):
    assert clip_tok.encode("<|startoftext|>") == [SOT]
    assert clip_tok.encode("<|ENDOFTEXT|>") == [EOT]  # lower-cased before matching
    assert clean_text("  &amp;lt;B&amp;gt;  Two\t\nLines ") == "<b> two lines"
    assert clip_tok.encode("C") == clip_tok.encode("c")


def test_decode(clip_tok):
    ids = clip_tok("A video of a person cutting vegetables.")
    assert clip_tok.decode(ids, skip_special_tokens=True) == "a video of a person cutting vegetables . "
    assert clip_tok.decode(ids[:3]).startswith("<|startoftext|>a video")


def test_hf_folder_format_gives_same_ids(tmp_path, bpe_path, clip_tok, fixture):
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : tk.NUM_MERGES + 1]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "vocab.json").write_text(json.dumps(clip_tok.encoder), encoding="utf-8")
    from_folder = SimpleTokenizer(tmp_path)
    assert torch.equal(from_folder(fixture["strings"]), torch.tensor(fixture["token_ids"]))

    bad = dict(clip_tok.encoder)
    bad["a</w>"], bad["b</w>"] = bad["b</w>"], bad["a</w>"]
    (tmp_path / "vocab.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.json"):
        SimpleTokenizer(tmp_path)


def test_bpe_path_resolution(tmp_path, bpe_path, monkeypatch):
    monkeypatch.setenv(tk.BPE_ENV_VAR, str(bpe_path))
    assert tk.resolve_bpe_path() == bpe_path
    assert SimpleTokenizer().vocab_size == 49408
    monkeypatch.setenv(tk.BPE_ENV_VAR, str(tmp_path / "nope.txt.gz"))
    with pytest.raises(FileNotFoundError, match="LAVILA_BPE_PATH"):
        tk.resolve_bpe_path()
    monkeypatch.delenv(tk.BPE_ENV_VAR)
    monkeypatch.setattr(tk, "_bundled_copies", lambda: [])
    with pytest.raises(FileNotFoundError, match="bpe_path=") as err:
        tk.resolve_bpe_path(download=False)
    assert "merges.txt" in str(err.value) and tk.HF_CLIP_REPO in str(err.value)


def test_corrupt_bpe_file_is_named(tmp_path):
    bad = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bpe_simple_vocab_16e6"):
        SimpleTokenizer(bad)


@pytest.mark.parametrize(
    ("name", "kind", "hf_name", "ids"),
    [
        ("CLIP_OPENAI_TIMESFORMER_BASE", "clip_bpe", None, (49406, 49407)),
        ("CLIP_OPENAI_TIMESFORMER_LARGE_336PX_DISTILBERT_BASE", "wordpiece", "distilbert-base-uncased", (101, 102)),
        ("CLIP_HF_EGOVLP_DISTILBERT_BASE", "wordpiece", "distilbert-base-uncased", (101, 102)),
        ("VCLM_OPENAI_TIMESFORMER_BASE_GPT2", "gpt2", "gpt2", (50256, 50256)),
        ("VCLM_OPENAI_TIMESFORMER_LARGE_336PX_GPT2_XL", "gpt2", "gpt2", (50256, 50256)),
    ],
)
def test_every_row_names_its_tokenizer(name, kind, hf_name, ids):
    """The tokenizer is data of the row (the reference chose it by name suffix); GPT-2 sizes share one vocabulary."""
    tc = get_config(name).tokenizer
    assert (tc.kind, tc.name, (tc.bos_id, tc.eos_id)) == (kind, hf_name, ids)


def _tiny_row(name, vocab_size, bos, eos, context_length):
    """A registry row whose tokenizer expectations fit the tiny test vocabularies below."""
    return get_config(name, tokenizer_vocab_size=vocab_size, tokenizer_bos_id=bos, tokenizer_eos_id=eos,
                      tokenizer_context_length=context_length)


@pytest.fixture
def tiny_wordpiece_dir(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "c", "picks", "up", "a", "knife", "#"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return tmp_path


def test_distilbert_wrapper(tiny_wordpiece_dir):
    row = _tiny_row("CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", 11, 2, 3, 8)
    tok = get_tokenizer(row, tiny_wordpiece_dir)
    ids, mask = tok("#C C picks up a knife")
    # [CLS] # c c picks up a knife [SEP] is 9 ids: cut to 8 *after* the specials, so [SEP] is lost
    assert ids.tolist() == [2, 10, 5, 5, 6, 7, 8, 9]
    assert mask.dtype == torch.float32 and mask.tolist() == [1.0] * 8
    ids, mask = tok(["c picks", "knife"])
    assert ids.tolist() == [[2, 5, 6, 3, 0, 0, 0, 0], [2, 9, 3, 0, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert (tok.bos_token_id, tok.eos_token_id) == (2, 3)


def test_hf_wrapper_accepts_a_tokenizer_object(tiny_wordpiece_dir):
    from transformers import DistilBertTokenizer

    hf = DistilBertTokenizer.from_pretrained(tiny_wordpiece_dir)
    row = _tiny_row("CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", 11, 2, 3, 5)
    ids, _ = get_tokenizer(row, tokenizer=hf)("a knife")
    assert ids.tolist() == [2, 8, 9, 3, 0]


@pytest.fixture
def tiny_gpt2_dir(tmp_path):
    vocab = {"!": 0, "a": 1, "b": 2, "\u0120": 3, "\u0120b": 4, "<|endoftext|>": 5}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n\u0120 b\n")
    return tmp_path


def test_gpt2_wrapper(tiny_gpt2_dir):
    row = _tiny_row("VCLM_OPENAI_TIMESFORMER_BASE_GPT2", 6, 5, 5, 6)
    tok = get_tokenizer(row, tiny_gpt2_dir)
    # "a b" -> "a", "Ġb" (merged); wrapped as [bos] + ids + [eos], padded with 0 (which is also "!")
    assert tok("a b").tolist() == [5, 1, 4, 5, 0, 0]
    # "a b a b" -> a Ġb Ġ a Ġb (5 ids): only context-2 = 4 survive between bos and eos
    assert tok(["a b a b"]).tolist() == [[5, 1, 4, 3, 1, 5]]
    no_bos = get_tokenizer(row, tiny_gpt2_dir, add_bos=False)
    assert no_bos("a b").tolist() == [1, 4, 5, 0, 0, 0]


def test_clip_rejects_hf_arguments(bpe_path):
    with pytest.raises(ValueError, match="source="):
        get_tokenizer("CLIP_OPENAI_TIMESFORMER_BASE", bpe_path, tokenizer=object())


def test_a_wrong_vocabulary_is_refused_with_the_files_and_the_flag(tiny_wordpiece_dir):
    """Offline, transformers hands out an empty/unrelated tokenizer: the row's ids catch it, naming the fix."""
    with pytest.raises(TokenizerError) as err:
        get_tokenizer("CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", tiny_wordpiece_dir)
    msg = str(err.value)
    assert "vocabulary of 11 tokens, the model's has 30522" in msg
    assert "vocab.txt" in msg and "--tokenizer" in msg and "LAVILA_BERT_TOKENIZER" in msg


def test_wrong_special_ids_are_refused(tiny_gpt2_dir):
    row = _tiny_row("VCLM_OPENAI_TIMESFORMER_BASE_GPT2", 6, 4, 5, 6)  # claims BOS 4; the files say 5
    with pytest.raises(TokenizerError, match="start id 5, the model's is 4"):
        get_tokenizer(row, tiny_gpt2_dir)


def test_missing_source_folder_is_named(tmp_path):
    with pytest.raises(TokenizerError, match=str(tmp_path / "nope")):
        get_tokenizer("VCLM_OPENAI_TIMESFORMER_BASE_GPT2", tmp_path / "nope")
