"""The recipe's mechanism at a small size: tests that fail when a join of the recipe breaks.

LaViLa's claim in miniature (docs/demo.md): the narrator's language model read every sentence of the world's
language (text only), so it can name combinations that no human narrated; a dual encoder trained on narrator-style
pseudo-captions of every moment learns them. Two joins are checked here:

* the **LM prior**: the `lm` stage on the world corpus makes unseen-combination sentences likely, where the LM that
  read only the human narrations does not (the ablation);
* **pseudo-caption -> moment -> encoder**: the reference's quintuple pickle (as `lavila narrate` writes it) holding
  a description of every moment, read back by the ego4d dataset, teaches a dual encoder the unseen combinations;
  the same pickle with the captions emptied, or shuffled across moments (a broken join), stays near chance.

The captions are the world's truth in narrator form (10 sentences a moment, paraphrases mixed in), not a trained
narrator's: at a size this test can afford the baseline's visual tower is too weak for a narrator to be right (the
protocol's gate, docs/demo.md), and a join test must not depend on that.
"""

from __future__ import annotations

import random
import shutil

import pytest

pytest.importorskip("av")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    import lavila.demo_recipe as R
    from lavila.data.synthetic import WorldSpec

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("mechanism")
    sizes = R.RecipeSizes(world=WorldSpec(videos=24, segments=10, test_videos=8, val_videos=1, narrated=0.6),
                          de_steps=240, de_epochs=4, lm_steps=150, batch_size=16, ablations=False)
    R.stage_world(out, sizes, 0, False)
    return out, sizes


def _nll(folder, sentences) -> float:
    import torch
    from transformers import GPT2LMHeadModel

    from lavila.data.synthetic import gpt2_word_tokenizer
    from lavila.models.tokenizers import HFGPT2Tokenizer

    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = HFGPT2Tokenizer(gpt2_word_tokenizer(), context_length=16)(sentences)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids.masked_fill(ids == 0, -100)).loss)


def test_the_world_corpus_gives_the_lm_a_prior_over_unseen_combinations(world) -> None:
    import lavila.demo_recipe as R
    from lavila.data.synthetic import PARAPHRASES, split_combos

    out, sizes = world
    R.stage_lm(out, sizes, 0, False, "world", "gpt2")
    R.stage_lm(out, sizes, 0, False, "human", "gpt2_human")
    unseen = [t.format(c=k.colour, o=k.obj) for k in split_combos("heldout") for t in PARAPHRASES[k.action][:1]]
    unseen += [k.caption() for k in split_combos("heldout")]
    world_nll, human_nll = _nll(out / "models" / "gpt2", unseen), _nll(out / "models" / "gpt2_human", unseen)
    assert world_nll < human_nll - 0.3, (world_nll, human_nll)  # per token: the prior knows what humans never said


def test_pseudo_captions_of_every_moment_teach_unseen_combinations_and_a_broken_join_does_not(world) -> None:
    import json

    import lavila.demo_recipe as R
    from lavila.data.metadata import load_metadata, save_metadata
    from lavila.data.synthetic import PARAPHRASES, describe
    from lavila.models import create_model, tokenizer_for

    out, sizes = world
    windows = load_metadata(out / "world" / "windows_train.pkl")
    truth = json.loads((out / "world" / "world.json").read_text())["windows_truth"]
    rng = random.Random(0)
    rows = []
    for (uid, t0, t1, _), true in zip(windows, truth):
        k = describe(true)
        texts = [rng.choice([true] + [p.format(c=k.colour, o=k.obj) for p in PARAPHRASES[k.action]])
                 for _ in range(10)]
        rows.append((uid, t0, t1, texts, [0.0] * 10))  # the reference's quintuples, as lavila narrate writes them
    save_metadata(rows, out / "pseudo_train.pkl")
    save_metadata([(u, a, b, [""] * 10, s) for u, a, b, _, s in rows], out / "empty_train.pkl")
    moved = [r[3] for r in rows]
    rng.shuffle(moved)
    save_metadata([(u, a, b, t, s) for (u, a, b, _, s), t in zip(rows, moved)], out / "shuffled_train.pkl")

    maps = {}
    for name in ("pseudo", "empty", "shuffled"):
        shutil.copyfile(out / "world" / "ego4d_val.pkl", out / f"{name}_val.pkl")  # the loop's validation file
        R.train_dual_encoder(R.de_values(out, name, sizes, 0, False, str(out / f"{name}_train.pkl")))
        model = create_model(out / "models" / name, kind="dual_encoder")
        result = R.heldout_retrieval(model, tokenizer_for(model), out)
        maps[name] = result["unseen combinations"]["t2v_mAP"]
        chance = result["chance (unseen combinations)"]["t2v_mAP"]
    (out / "mechanism.json").write_text(json.dumps({"maps": maps, "chance": chance}))
    assert maps["pseudo"] > chance + 10, (maps, chance)
    for control in ("empty", "shuffled"):
        assert maps[control] < chance + 8, (control, maps, chance)
        assert maps["pseudo"] > maps[control] + 10, (control, maps)
