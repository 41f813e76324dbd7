"""NLG metrics of `lavila eval-narrator` against hand-computed values, and the BERT normalisation."""

from __future__ import annotations

import json
import math
import pickle
import shutil

import pytest

pytest.importorskip("pycocoevalcap", reason="NLG metrics need the optional dependency: pip install 'lavila[nlg]'")

from lavila.narrate.nlg import bert_normalize, compute_nlg_metrics  # noqa: E402

REFS = ["a man cuts the bread", "the woman stirs the pot"]
HYPS = ["a man cuts bread", "the woman stirs a pot"]


def test_bleu_by_hand() -> None:
    # Clipped n-gram matches over the corpus (COCO BLEU: corpus counts, 'closest' reference length):
    #   1-grams: hyp1 4/4 (a man cuts bread), hyp2 4/5 ("a" unmatched)            -> p1 = 8/9
    #   2-grams: hyp1 2/3 (a man, man cuts), hyp2 2/4 (the woman, woman stirs)     -> p2 = 4/7
    #   3-grams: hyp1 1/2 (a man cuts), hyp2 1/3 (the woman stirs)                 -> p3 = 2/5
    #   4-grams: 0/3                                                               -> BLEU-4 ~ 0
    # lengths: hypotheses 4+5 = 9, references 5+5 = 10 -> brevity penalty exp(1 - 10/9)
    m = compute_nlg_metrics(REFS, HYPS, meteor=False)
    bp = math.exp(1 - 10 / 9)
    assert m["Bleu_1"] == pytest.approx(8 / 9 * bp, rel=1e-6)
    assert m["Bleu_2"] == pytest.approx((8 / 9 * 4 / 7) ** (1 / 2) * bp, rel=1e-6)
    assert m["Bleu_3"] == pytest.approx((8 / 9 * 4 / 7 * 2 / 5) ** (1 / 3) * bp, rel=1e-6)
    assert m["Bleu_4"] < 1e-3


def test_rouge_l_by_hand() -> None:
    # ROUGE-L = (1 + b^2) P R / (R + b^2 P), b = 1.2, P = LCS/len(hyp), R = LCS/len(ref), mean over sentences.
    #   pair 1: LCS "a man cuts bread" = 4, P = 4/4, R = 4/5 -> 2.44 * 0.8 / (0.8 + 1.44)   = 0.871428...
    #   pair 2: LCS "the woman stirs pot" = 4, P = R = 4/5   -> 2.44 * 0.64 / (0.8 + 1.152) = 0.8
    m = compute_nlg_metrics(REFS, HYPS, meteor=False)
    assert m["ROUGE_L"] == pytest.approx((2.44 * 0.8 / 2.24 + 0.8) / 2, rel=1e-9)


def test_cider_d_by_hand() -> None:
    # Corpus of 2 references -> idf weight w = log(2) - log(max(1, df)); every n-gram here has df <= 1, so w = log 2.
    # Pair 1: hyp "x z" vs ref "x y". 1-grams: dot = w*w (x, clipped min(w,w)*w), norms w*sqrt(2) each -> 1/2.
    #         2-grams: "x z" vs "x y" -> 0. 3-,4-grams: none -> 0. Same bigram count -> no length penalty.
    #         score = 10 * mean(1/2, 0, 0, 0) = 1.25
    # Pair 2: hyp == ref "p q": 1-grams 1, 2-grams 1, rest 0 -> 10 * mean(1, 1, 0, 0) = 5.0
    m = compute_nlg_metrics(["x y", "p q"], ["x z", "p q"], meteor=False)
    assert m["CIDEr"] == pytest.approx((1.25 + 5.0) / 2, rel=1e-9)


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs the METEOR 1.5 jar (needs java)")
def test_meteor_prefers_the_closer_hypothesis() -> None:
    good = compute_nlg_metrics(REFS, HYPS)["METEOR"]
    bad = compute_nlg_metrics(REFS, ["pot", "bread"])["METEOR"]
    assert 0 <= bad < good <= 1


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "#", "c", "o", "picks", "up", "the", "knife", ".", ",",
             "cut", "##s", "bread", "stir", "pot", "a", "pan", "chef", "baker", "dough"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tok.save_pretrained(folder)
    return folder, tok


def test_bert_normalisation_lowercases_splits_punctuation_and_joins_pieces(tiny_bert) -> None:
    _, tok = tiny_bert
    # "#C" -> "#", "c"; "Cuts" -> "cut" "##s" -> joined back; " ." re-attached by the 4.27-style cleanup
    assert bert_normalize("#C C Cuts the Bread.", tok) == "# c c cuts the bread."
    assert bert_normalize("#O a baker picks up the dough, the knife", tok) == \
        "# o a baker picks up the dough, the knife"


def test_eval_narrator_end_to_end(tiny_bert, tiny_checkpoint, media_dir, tmp_path) -> None:
    from lavila.cli import main

    folder, _ = tiny_bert
    rows = [("3c0dffd0-e38e-4643-bc48-d513943dc20b_012_014", 0.0, 1.5, "#C C stirs the pan"),
            ("not_a_video", 0.0, 1.0, "broken"),
            ("mixkit-hands-of-a-baker-kneading-a-dough-42467-medium", 1.0, 3.0, "#O a baker kneads the dough")]
    meta = tmp_path / "ego_val.pkl"
    meta.write_bytes(pickle.dumps(rows))
    code = main(["eval-narrator", "--checkpoint", str(tiny_checkpoint), "--metadata", str(meta), "--video-root",
                 str(media_dir), "--chunk-len", "-1", "--fps", "-1", "--subsample", "1", "--bert-tokenizer",
                 str(folder), "--num-workers", "0", "--max-len", "10", "--device", "cpu", "--output",
                 str(tmp_path / "caption.txt"), "--metrics-json", str(tmp_path / "m.json")])
    assert code == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["clips"] == 2 and result["failed_clips"] == 1
    for key in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "ppl_with_teacher", "ppl_without_teacher"):
        assert math.isfinite(result[key])
    assert "Groundtruth" in (tmp_path / "caption.txt").read_text()
