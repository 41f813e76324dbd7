"""An embedded, procedurally rendered egocentric-style video-text set for the demo, tests and benchmarks.

Nothing is downloaded: every clip is drawn from its index. A clip shows a table top seen from the wearer's head
(brownish, textured, with a little camera shake), an arm and hand entering from the bottom edge and holding one
coloured object that moves left, right, up ("lifts") or down ("puts down"), sometimes next to a static distractor
object. Its narration is composed from the attributes, Ego4D style: ``"#C C moves the red cup to the left"``.

Splits (attribute combination = colour x object x action, 6 x 5 x 4 = 120 combinations):

* ``train``   - clips of the 96 *seen* combinations;
* ``val``     - fresh renders of seen combinations (held-out clips);
* ``heldout`` - the 24 combinations never shown in training (each colour, object and action does appear in
  training, only not together): zero-shot retrieval here needs composition, not memorisation.

Text sources mimic LaViLa's three kinds of supervision: ``human`` (one exact template per action), ``rephraser``
(several paraphrases, one picked at random each time the clip is read) and ``narrator`` (paraphrases plus 15 %
wrong attributes - a noisy pseudo-labeller). Tokens come from :class:`WordTokenizer`, a word-level vocabulary
built from these templates (the CLIP BPE file is not available offline), with EOT the largest id so the CLIP text
tower's argmax pooling finds it.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lavila.models.config import PreprocessConfig
from lavila.models.tokenizers import WordTokenizer

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 205, 215),
}
OBJECTS = ("ball", "box", "plate", "bottle", "knife")
ACTIONS = ("left", "right", "lift", "put_down")
_DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "lift": (0.0, -1.0), "put_down": (0.0, 1.0)}

HUMAN_TEMPLATES = {
    "left": "#C C moves the {c} {o} to the left",
    "right": "#C C moves the {c} {o} to the right",
    "lift": "#C C lifts the {c} {o}",
    "put_down": "#C C puts down the {c} {o}",
}
PARAPHRASES = {
    "left": ["#C C slides the {c} {o} left", "#C C pushes the {c} {o} towards the left",
             "#C C shifts the {c} {o} leftwards"],
    "right": ["#C C slides the {c} {o} right", "#C C pushes the {c} {o} towards the right",
              "#C C shifts the {c} {o} rightwards"],
    "lift": ["#C C picks up the {c} {o}", "#C C raises the {c} {o}", "#C C lifts up the {c} {o}"],
    "put_down": ["#C C places the {c} {o} down", "#C C lowers the {c} {o}", "#C C sets down the {c} {o}"],
}
TEXT_SOURCES = ("human", "rephraser", "narrator")
SPLITS = ("train", "val", "heldout")


@dataclass(frozen=True)
class Combo:
    colour: str
    obj: str
    action: str

    def caption(self) -> str:
        return HUMAN_TEMPLATES[self.action].format(c=self.colour, o=self.obj)


def all_combos() -> list[Combo]:
    return [Combo(c, o, a) for c, o, a in itertools.product(COLOURS, OBJECTS, ACTIONS)]


def is_heldout(combo: Combo) -> bool:
    """24 of 120 combinations, chosen so that every colour, object and action still occurs in training."""
    c, o, a = list(COLOURS).index(combo.colour), OBJECTS.index(combo.obj), ACTIONS.index(combo.action)
    return (c + 2 * o + 3 * a) % 5 == 0


def split_combos(split: str) -> list[Combo]:
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; choose from {SPLITS}")
    return [k for k in all_combos() if is_heldout(k) == (split == "heldout")]


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


def _template_words() -> list[str]:
    texts = list(HUMAN_TEMPLATES.values()) + [t for v in PARAPHRASES.values() for t in v]
    words = {w for t in texts for w in t.lower().split() if w not in ("{c}", "{o}")}
    return sorted(words | set(COLOURS) | set(OBJECTS))


def synthetic_tokenizer(context_length: int = 16) -> WordTokenizer:
    """The word-level tokenizer over this world's vocabulary (saved beside the demo's models)."""
    return WordTokenizer(_template_words(), context_length=context_length)


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _shape_mask(obj: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if obj == "ball":
        return dy**2 + dx**2 <= r**2
    if obj == "box":
        return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
    if obj == "plate":
        d2 = dy**2 + dx**2
        return (d2 <= (1.1 * r) ** 2) & (d2 >= (0.55 * r) ** 2)
    if obj == "bottle":
        return (np.abs(dx) <= 0.4 * r) & (np.abs(dy) <= 1.2 * r)
    if obj == "knife":
        return (np.abs(dx) <= 1.4 * r) & (np.abs(dy) <= 0.25 * r)
    raise ValueError(f"unknown object {obj!r}")


def render_clip(combo: Combo, rng: np.random.Generator, num_frames: int = 4, size: int = 40,
                distractor_prob: float = 0.5) -> np.ndarray:
    """uint8 ``[T, size, size, 3]`` frames of one action (deterministic given `rng`)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.array([130, 105, 80], np.float32) + rng.uniform(-25, 25, 3)
    grain = rng.normal(0, 6, (size, size, 1)).astype(np.float32)
    light = (1.0 + 0.25 * (xx / size - 0.5) * rng.uniform(-1, 1))[..., None]
    table = np.clip((base[None, None] + grain) * light, 0, 255)

    r = size * rng.uniform(0.10, 0.14)
    travel = size * rng.uniform(0.28, 0.38)
    dx, dy = _DIRECTIONS[combo.action]
    margin = r * 1.6 + 1
    # start so that the whole path stays in the frame
    cx0 = rng.uniform(margin + max(0, -dx) * travel, size - margin - max(0, dx) * travel)
    cy0 = rng.uniform(margin + max(0, -dy) * travel, size - margin - max(0, dy) * travel)
    colour = np.clip(np.array(COLOURS[combo.colour], np.float32) + rng.uniform(-20, 20, 3), 0, 255)
    skin = np.clip(np.array([225, 175, 145], np.float32) + rng.uniform(-25, 15, 3), 0, 255)

    distractor = None
    if rng.random() < distractor_prob:
        d_colour = rng.choice([c for c in COLOURS if c != combo.colour])
        d_obj = rng.choice([o for o in OBJECTS if o != combo.obj])
        distractor = (d_obj, rng.uniform(margin, size - margin), rng.uniform(margin, size - margin),
                      np.array(COLOURS[d_colour], np.float32))

    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        frac = t / max(num_frames - 1, 1)
        shake_y, shake_x = rng.normal(0, size * 0.015, 2)
        cx, cy = cx0 + dx * travel * frac + shake_x, cy0 + dy * travel * frac + shake_y
        img = table.copy()
        if distractor is not None:
            d_obj, d_x, d_y, d_col = distractor
            img[_shape_mask(d_obj, yy, xx, d_y + shake_y, d_x + shake_x, r * 0.9)] = d_col
        # the arm: a thick band from the bottom edge to the hand, drawn under the object
        hx, hy = cx + 0.6 * r, cy + 0.9 * r
        ax = hx + (size * 0.2)
        t_line = np.clip(((xx - ax) * (hx - ax) + (yy - size) * (hy - size)) /
                         max((hx - ax) ** 2 + (hy - size) ** 2, 1e-6), 0, 1)
        dist = np.hypot(xx - (ax + t_line * (hx - ax)), yy - (size + t_line * (hy - size)))
        img[dist <= 0.45 * r] = skin * 0.9
        img[(xx - hx) ** 2 / (0.7 * r) ** 2 + (yy - hy) ** 2 / (0.55 * r) ** 2 <= 1] = skin
        img[_shape_mask(combo.obj, yy, xx, cy, cx, r)] = colour
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------


def caption_for(combo: Combo, source: str, rng: random.Random) -> str:
    if source == "human":
        return combo.caption()
    if source == "rephraser":
        return rng.choice(PARAPHRASES[combo.action]).format(c=combo.colour, o=combo.obj)
    if source == "narrator":
        colour, obj = combo.colour, combo.obj
        if rng.random() < 0.15:
            colour = rng.choice(list(COLOURS))
        if rng.random() < 0.15:
            obj = rng.choice(OBJECTS)
        template = rng.choice([HUMAN_TEMPLATES[combo.action]] + PARAPHRASES[combo.action])
        return template.format(c=colour, o=obj)
    raise ValueError(f"unknown synthetic text source {source!r}; choose from {TEXT_SOURCES}")


class SyntheticEgoClips(Dataset):
    """``len(self)`` clips of `split`; item `i` is a dict ``{video [3,T,S,S] float, text [L] long, caption str}``.

    Clip `i` always shows the same combination and the same rendering (seeded by ``(seed, split, i)``); what
    varies per read is drawn from the global RNGs - the random crop in training, the paraphrase picked for
    ``rephraser``/``narrator`` text - so the trainer's per-sample seeding makes runs reproducible.
    """

    def __init__(self, split: str = "train", size: int = 1024, *, num_frames: int = 4, img_size: int = 32,
                 text_source: str = "human", seed: int = 0, train_augment: bool | None = None,
                 tokenizer: WordTokenizer | None = None, preprocess: PreprocessConfig | None = None,
                 distractor_prob: float = 0.5) -> None:
        if text_source not in TEXT_SOURCES:
            raise ValueError(f"unknown synthetic text source {text_source!r}; choose from {TEXT_SOURCES}")
        if size <= 0:
            raise ValueError(f"synthetic set size must be positive, got {size}")
        self.split, self.size, self.num_frames, self.img_size = split, size, num_frames, img_size
        self.text_source, self.seed = text_source, seed
        self.combos = split_combos(split)
        self.augment = (split == "train") if train_augment is None else train_augment
        self.tokenizer = tokenizer or synthetic_tokenizer()
        self.render_size = img_size + img_size // 4 if self.augment else img_size
        self.distractor_prob = distractor_prob
        from lavila.models.transforms import eval_transform, train_transform

        p = preprocess or PreprocessConfig()
        mean, std = p.mean, p.std
        self.transform = (train_transform(img_size, mean, std, scale=(0.7, 1.0)) if self.augment
                          else eval_transform(img_size, mean, std))

    def __len__(self) -> int:
        return self.size

    def combo(self, index: int) -> Combo:
        return self.combos[index % len(self.combos)]

    def frames(self, index: int) -> np.ndarray:
        split_id = SPLITS.index(self.split)
        rng = np.random.default_rng([self.seed, split_id, index])
        return render_clip(self.combo(index), rng, self.num_frames, self.render_size, self.distractor_prob)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(f"synthetic {self.split} index {index} out of range [0, {self.size})")
        video = self.transform(torch.from_numpy(self.frames(index)).float())
        caption = caption_for(self.combo(index), self.text_source,
                              random.Random(random.getrandbits(32)))
        return {"video": video, "text": self.tokenizer(caption), "caption": caption}


def heldout_groups(num_groups: int, seed: int = 0, **kwargs) -> SyntheticEgoClips:
    """`num_groups` x 24 held-out clips; rows ``g*24 .. g*24+23`` have 24 distinct captions (one per combination)."""
    return SyntheticEgoClips("heldout", num_groups * len(split_combos("heldout")), seed=seed, **kwargs)


def chance_recall(k: int, n: int) -> float:
    return min(k, n) / n


def chance_median_rank(n: int) -> float:
    return (n + 1) / 2


# ---------------------------------------------------------------------------------------------------------------
# Long videos with sparse human narrations (the world of the full `lavila demo` recipe)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSpec:
    """Sizes of the long-video world; every number is a knob of ``lavila demo`` (tests use smaller ones).

    Each training video is ``segments`` back-to-back actions of ``segment_seconds`` each, drawn from *all* 120
    combinations. A human narrated only ``narrated`` of the moments, and only moments of the 96 seen
    combinations (as in Ego4D, where most moments are never narrated and rare compositions rarely are): the 24
    held-out combinations occur in the training videos but no human ever names them. The test videos are
    separate renders with a true description of every moment.
    """

    videos: int = 32
    segments: int = 8
    segment_seconds: float = 1.0
    fps: int = 8
    size: int = 40
    narrated: float = 0.3
    test_videos: int = 12
    val_videos: int = 3
    seed: int = 0


PARAPHRASE_PAIRS_FILE = "paraphrase_pairs.json"
WORLD_FILE = "world.json"


def paraphrase_pairs(combos: list[Combo] | None = None) -> list[tuple[str, str]]:
    """(human narration, paraphrase) pairs: every paraphrase template applied to each seen combination.

    The rephraser's training data. It only holds combinations a human narrated (the seen ones), so a paraphraser
    that generalises must learn the template swap, not the sentences.
    """
    combos = split_combos("train") if combos is None else combos
    return [(k.caption(), t.format(c=k.colour, o=k.obj)) for k in combos for t in PARAPHRASES[k.action]]


def world_sentences() -> list[str]:
    """Every sentence the world's language allows: each of the 120 combinations in each template (480).

    The demo's analogue of GPT-2's web text: the narrator's language model reads it (text only, no video) and so
    knows sentences, unseen combinations among them, that no human narration contains.
    """
    return [t.format(c=k.colour, o=k.obj) for k in all_combos()
            for t in [HUMAN_TEMPLATES[k.action], *PARAPHRASES[k.action]]]


def world_words() -> list[str]:
    """Every word of the world, case kept (the GPT-2/T5 vocabularies; ``#C`` is one word)."""
    texts = list(HUMAN_TEMPLATES.values()) + [t for v in PARAPHRASES.values() for t in v]
    words = {w for t in texts for w in t.split() if w not in ("{c}", "{o}")}
    return sorted(words | set(COLOURS) | set(OBJECTS))


def gpt2_word_tokenizer() -> Any:
    """A GPT-2-style HF tokenizer over the world's words: id 0 ``<pad>``, BOS = EOS = ``<|endoftext|>`` = last id.

    Word-level (``tokenizers`` WordLevel, whitespace split) because a 100-word world needs no BPE; saved as an
    ordinary ``tokenizer.json`` folder, so the narrator task's ``tokenizer`` key and ``lavila narrate`` read it.
    """
    return _word_level(["<pad>", "<unk>"] + world_words() + ["<|endoftext|>"], unk="<unk>", pad="<pad>",
                       bos="<|endoftext|>", eos="<|endoftext|>")


def t5_word_tokenizer() -> Any:
    """A T5-style HF tokenizer over the world's words and the rephraser prompt: pad 0, ``</s>`` 1, ``<unk>`` 2."""
    return _word_level(["<pad>", "</s>", "<unk>", "paraphrase:"] + world_words(), unk="<unk>", pad="<pad>",
                       eos="</s>")


def _word_level(vocab: list[str], *, unk: str, pad: str, eos: str, bos: str | None = None) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    special = [w for w in (pad, unk, eos, bos) if w]
    tok.add_special_tokens(list(dict.fromkeys(special)))
    kw = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, pad_token=pad, eos_token=eos, **kw)


def _video_combos(rng: np.random.Generator, n: int, pool: list[Combo]) -> list[Combo]:
    return [pool[int(i)] for i in rng.integers(0, len(pool), n)]


def write_world(root: str | Path, spec: WorldSpec = WorldSpec(), progress: Any = None) -> dict[str, Any]:
    """Render the world to ``root``: mp4 videos and metadata files in the reference (Ego4D) formats.

    ``root/videos/<uid>.mp4`` (whole videos: read with ``chunk_len -1, fps -1``) and, as 4-tuple pickles
    ``(uid, start, end, text)``:

    * ``ego4d_train.pkl`` - the sparse human narrations (seen combinations only);
    * ``ego4d_val.pkl``   - human narrations of the validation videos (the training loop's validation loss);
    * ``windows_train.pkl`` - every moment of the training videos, narrated or not (what ``lavila narrate``
      pseudo-labels; the text is the human narration where there is one, else ``""``);
    * ``heldout_test.pkl`` - every moment of the test videos with its true description;
      ``world.json`` says which rows are unseen combinations;
    * ``paraphrase_pairs.json`` - the rephraser's (human, paraphrase) training pairs.

    Idempotent: a video already on disk is not rendered again. Returns the ``world.json`` document.
    """
    import json

    from lavila.atomic import atomic_write_text
    from lavila.data.metadata import save_metadata
    from lavila.data.prepare import write_video

    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    everything = all_combos()
    seg, fpv = spec.segment_seconds, max(int(round(spec.segment_seconds * spec.fps)), 2)
    rows: dict[str, list[tuple[str, float, float, str]]] = {"train": [], "windows": [], "val": [], "test": []}
    unseen_test: list[bool] = []
    unseen_in_train = 0
    windows_truth: list[str] = []
    plan = ([("train", i) for i in range(spec.videos)] + [("val", i) for i in range(spec.val_videos)]
            + [("test", i) for i in range(spec.test_videos)])
    for split, i in plan:
        uid = f"synth_{split}_{i:03d}"
        rng = np.random.default_rng([spec.seed, ("train", "val", "test").index(split), i, 7])
        combos = _video_combos(rng, spec.segments, everything if split != "val" else split_combos("train"))
        narrate_rng = np.random.default_rng([spec.seed, i, 11])
        for k, combo in enumerate(combos):
            t0, t1 = round(k * seg, 3), round((k + 1) * seg, 3)
            if split == "train":
                human = not is_heldout(combo) and narrate_rng.random() < spec.narrated
                text = combo.caption() if human else ""
                rows["windows"].append((uid, t0, t1, text))
                unseen_in_train += is_heldout(combo)
                windows_truth.append(combo.caption())
                if human:
                    rows["train"].append((uid, t0, t1, text))
            elif split == "val":
                rows["val"].append((uid, t0, t1, combo.caption()))
            else:
                rows["test"].append((uid, t0, t1, combo.caption()))
                unseen_test.append(is_heldout(combo))
        path = root / "videos" / f"{uid}.mp4"
        if not path.is_file():
            frames = np.concatenate([render_clip(c, rng, fpv, spec.size) for c in combos])
            tmp = path.with_name(f".{path.name}.tmp.mp4")
            write_video(tmp, iter(frames), spec.fps)
            tmp.replace(path)
        if progress is not None:
            progress.update(1)
    if not rows["train"]:
        raise ValueError(f"world {spec}: no moment was narrated; raise videos, segments or narrated")
    files = {"train": "ego4d_train.pkl", "windows": "windows_train.pkl", "val": "ego4d_val.pkl",
             "test": "heldout_test.pkl"}
    for key, name in files.items():
        save_metadata(rows[key], root / name)
    atomic_write_text(root / PARAPHRASE_PAIRS_FILE, json.dumps(paraphrase_pairs(), indent=0) + "\n")
    moments = len(rows["windows"])
    doc = {"spec": asdict(spec), "video_root": str(root / "videos"), "files": files,
           "moments": moments, "human_narrations": len(rows["train"]),
           "coverage": len(rows["train"]) / moments, "test_unseen": unseen_test,
           "unseen_combination_moments_in_train_videos": unseen_in_train,
           "windows_truth": windows_truth}
    atomic_write_text(root / WORLD_FILE, json.dumps(doc, indent=1) + "\n")
    return doc


_CAPTION_TO_COMBO = {k.caption(): k for k in all_combos()}


def describe(caption: str) -> Combo | None:
    """The combination a narration names, human template or paraphrase (None if it matches neither)."""
    if caption in _CAPTION_TO_COMBO:
        return _CAPTION_TO_COMBO[caption]
    return _PARAPHRASE_TO_COMBO.get(caption)


_PARAPHRASE_TO_COMBO = {t.format(c=k.colour, o=k.obj): k for k in all_combos() for t in PARAPHRASES[k.action]}


__all__ = ["COLOURS", "OBJECTS", "ACTIONS", "Combo", "SyntheticEgoClips", "synthetic_tokenizer", "all_combos",
           "chance_recall", "chance_median_rank", "heldout_groups", "is_heldout", "render_clip", "split_combos",
           "WorldSpec", "describe", "gpt2_word_tokenizer", "paraphrase_pairs", "t5_word_tokenizer", "world_sentences",
           "world_words",
           "write_world"]
