"""`lavila rephrase` with a tiny random T5: batched, resumable, atomic output of 4-tuples with text lists."""

from __future__ import annotations

import pickle

import pytest
import torch

from lavila.narrate import rephrase as rp

ROWS = [("v1", 0.0, 1.0, "#C C cuts the bread."), ("v2", 1.0, 2.0, "#O a woman stirs the pot"),
        ("v3", 2.0, 3.0, "#C C picks up a knife"), ("v4", 3.0, 4.0, "#C C stirs the pot")]


def test_no_punkt_cleanup_keeps_tags_and_apostrophes() -> None:
    assert rp.strip_punctuation("C's knife, the pot.  #C  C  ") == "C's knife the pot #C C"
    settings = rp.RephraseSettings()
    assert rp.clean_outputs("x", ["A b.", "a B", "", "c!"], settings) == ["A b", "c"]
    assert rp.clean_outputs("orig.", ["", "..."], settings) == ["orig."]  # nothing usable: keep the original
    assert rp.clean_outputs("Orig", ["new"], rp.RephraseSettings(include_original=True)) == ["Orig", "new"]


def test_prompt_is_sent_to_the_model(tiny_t5) -> None:
    seen = []

    class Spy:
        def __init__(self, model):
            self.model = model

        def generate(self, **kwargs):
            seen.append(kwargs)
            return self.model.generate(**kwargs)

        def eval(self):
            return self

        def to(self, device):
            return self

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5)
    model = Spy(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5))
    r = rp.Rephraser(rp.RephraseSettings(model=str(tiny_t5), max_new_tokens=5), torch.device("cpu"), model, tok)
    outs = r(["the man cuts bread"], generator_seed=0)
    assert len(outs) == 1 and len(outs[0]) == 3
    ids = seen[0]["input_ids"][0].tolist()
    # "paraphrase: {text} </s>" + the tokenizer's own </s>
    assert tok.convert_ids_to_tokens(ids) == ["paraphrase", ":", "the", "man", "cuts", "bread", "</s>", "</s>"]
    assert seen[0]["do_sample"] and seen[0]["top_k"] == 120 and seen[0]["top_p"] == 0.95


def test_rephrase_resumes_and_writes_each_row_once(tiny_t5, tmp_path) -> None:
    meta = tmp_path / "h_train.pkl"
    meta.write_bytes(pickle.dumps(ROWS))
    out = tmp_path / "h_train.rephraser.pkl"
    settings = rp.RephraseSettings(model=str(tiny_t5), max_new_tokens=6)
    kw = dict(device=torch.device("cpu"), batch_size=2, part_size=1, progress=False)
    first = rp.rephrase_metadata(meta, out, settings, limit=3, **kw)
    assert first["written"] is None and not out.exists()
    second = rp.rephrase_metadata(meta, out, settings, **kw)
    assert second["pending_at_start"] == 1 and second["written"] == str(out)
    rows = pickle.loads(out.read_bytes())
    assert [r[:3] for r in rows] == [r[:3] for r in ROWS]
    assert all(isinstance(r[3], list) and 1 <= len(r[3]) <= 3 and all(isinstance(t, str) for t in r[3])
               for r in rows)
    assert rp.rephrase_metadata(meta, out, settings, **kw)["pending_at_start"] == 0


def test_rows_that_already_hold_lists_are_refused(tiny_t5, tmp_path) -> None:
    meta = tmp_path / "x_train.pkl"
    meta.write_bytes(pickle.dumps([("v", 0.0, 1.0, ["a", "b"])]))
    with pytest.raises(ValueError, match="row 0"):
        rp.rephrase_metadata(meta, tmp_path / "o.pkl", rp.RephraseSettings(model=str(tiny_t5)),
                             device=torch.device("cpu"), progress=False)
