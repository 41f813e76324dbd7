"""``lavila demo``: pre-train a tiny video-text dual encoder on an embedded synthetic egocentric set, on CPU.

No data and no downloads: ``lavila.data.synthetic`` renders short clips of a hand moving a coloured object across a
table ("#C C moves the red ball to the left"). A tiny TimeSformer + CLIP-text dual encoder (word-level vocabulary;
the CLIP BPE file is not needed) is trained by the same loop and task as the real recipes, then zero-shot
text<->video retrieval is measured before and after training on

* **held-out combinations**: colour x object x action triples never seen in training (composition), and
* **held-out clips**: new renders of seen triples,

each in groups of 24 clips with 24 distinct captions, against chance. Outputs in ``--output-dir``: ``metrics.jsonl``,
``training_curves.png`` (loss and retrieval during training), ``demo_retrieval.png`` (before/after/chance),
``demo_results.json`` and the checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lavila.config import option
from lavila.dist import resolve_device
from lavila.models import get_config

# Tiny model: ~0.6 M parameters, about 0.1 s per step of 32 clips on 2 CPU threads.
DEMO_MODEL = "CLIP_OPENAI_TIMESFORMER_BASE"
DEMO_OVERRIDES = {"img_size": 32, "patch_size": 8, "vision_width": 96, "vision_layers": 3, "vision_heads": 4,
                  "text_width": 64, "text_layers": 2, "text_heads": 4}
GROUP = 24  # held-out combinations; every retrieval group has 24 clips with 24 distinct captions
DEMO_DEVICE = "cpu"  # a laptop demo: training and evaluation both run on the CPU threads given


def demo_values(output_dir: str, steps: int, seed: int, batch_size: int, workers: int, epochs: int = 4,
                eval_points: int = 8) -> dict[str, Any]:
    """The training configuration of the demo (a flat dict, exactly what a YAML recipe would hold)."""
    iters_per_epoch = max(math.ceil(steps / epochs), 1)
    return {
        "model": DEMO_MODEL,
        "model_overrides": dict(DEMO_OVERRIDES),
        "dataset": "synthetic",
        "pretrained": False,
        "output_dir": output_dir,
        "clip_length": 4,
        "project_embed_dim": 64,
        "norm_embed": True,
        "contrastive_use_vissl": True,
        "temperature_init": 0.07,
        "batch_size": batch_size,
        "epochs": epochs,
        "synthetic_train_size": iters_per_epoch * batch_size,
        "synthetic_eval_groups": 2,
        "lr": 2e-3,
        "lr_start": 1e-5,
        "lr_end": 1e-5,
        "warmup_epochs": min(0.5, epochs),
        "wd": 0.01,
        "workers": workers,
        "seed": seed,
        "print_freq": max(steps // 10, 1),
        "eval_in_middle_freq": max(steps // eval_points, 1),
        "eval_at_start": True,
        "save_freq": epochs,
        "device": DEMO_DEVICE,
    }


@dataclass
class DemoConfig:
    """The whole LaViLa recipe in miniature on synthetic egocentric videos, on CPU (no data, no downloads).

    Stages (resumable; see docs/demo.md): world -> baseline dual encoder -> GPT-2 LM -> narrator -> narrate ->
    rephraser -> LaViLa dual encoder (+ ablations) -> evaluation, with the protocol's validation gate before
    the LaViLa stage (docs/demo.md).
    ``--quick``: only pre-train one dual encoder on rendered clips (the short version).
    """

    quick: bool = option(False, "the short version: one dual encoder on rendered clips (no narrator/rephraser)")
    ablations: bool = option(False, "full recipe: also the LM-prior ablation (narrator on a GPT-2 that read the human "
                             "text only) and the narrator-only / rephraser-only dual encoders")
    gate: Literal["enforce", "report"] = option(
        "report", "the protocol's validation gate (docs/demo.md): enforce = stop before the LaViLa stage when it "
        "fails; report = print the verdict and run on (a walkthrough, not evidence)")
    lm_corpus: Literal["world", "human"] = option(
        "world", "the narrator's language model reads every sentence of the world's language (GPT-2's web text) or "
        "the human narrations only")
    steps: int = option(1000, "--quick: optimiser steps (~3 min on 2 cores)", positive=True)
    seed: int = option(0, "random seed (data, initial weights)", min=0)
    batch_size: int = option(32, "clips per step", positive=True)
    output_dir: str = option("./demo_out", "checkpoints, metrics, plots and demo_results.json go here")
    workers: int = option(0, "DataLoader workers (rendering is cheap)", min=0)
    threads: int = option(2, "torch CPU threads", positive=True)
    eval_groups: int = option(4, "groups of 24 clips per split for the before/after evaluation", positive=True)
    progress: bool = option(True, "tqdm progress bar (--no-progress for logs)")


def evaluate_splits(model: torch.nn.Module, task: Any, groups: int, seed: int) -> dict[str, dict[str, float]]:
    """Retrieval on held-out combinations and on held-out clips of seen combinations (groups of 24)."""
    from lavila.data.synthetic import SyntheticEgoClips, split_combos
    from lavila.train.tasks.dual_encoder import grouped_retrieval

    common = {"num_frames": 4, "img_size": DEMO_OVERRIDES["img_size"], "tokenizer": task.tokenizer,
              "preprocess": get_config(DEMO_MODEL).preprocess}
    heldout = SyntheticEgoClips("heldout", groups * GROUP, seed=seed + 2000, **common)
    # seen combinations, new clips: per group 24 distinct seen combinations drawn at random (like the held-out set,
    # not 24 neighbours in the list, which would differ only by the action)
    seen = split_combos("val")
    val = SyntheticEgoClips("val", len(seen) * groups, seed=seed + 3000, **common)
    rng = np.random.default_rng(seed)
    val_indices = [g * len(seen) + int(i) for g in range(groups) for i in rng.permutation(len(seen))[:GROUP]]
    from torch.utils.data import Subset

    device = resolve_device(DEMO_DEVICE)
    return {"held-out combinations": grouped_retrieval(model, heldout, GROUP, device),
            "held-out clips (seen combinations)": grouped_retrieval(model, Subset(val, val_indices), GROUP, device)}


def chance_metrics() -> dict[str, float]:
    from lavila.data.synthetic import chance_median_rank, chance_recall

    out = {}
    for d in ("t2v", "v2t"):
        out[f"{d}_R@1"] = 100 * chance_recall(1, GROUP)
        out[f"{d}_R@5"] = 100 * chance_recall(5, GROUP)
        out[f"{d}_MedR"] = chance_median_rank(GROUP)
    return out


def format_table(before: dict, after: dict, chance: dict) -> str:
    cols = ["t2v_R@1", "t2v_R@5", "t2v_MedR", "v2t_R@1", "v2t_R@5", "v2t_MedR"]
    header = "| split | model | " + " | ".join(c.replace("_", " ") for c in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 2)]
    for split in before:
        for name, row in (("chance", chance), ("before training", before[split]), ("after training", after[split])):
            cells = " | ".join(f"{row[c]:.1f}" for c in cols)
            lines.append(f"| {split} | {name} | {cells} |")
    return "\n".join(lines)


def plot_before_after(before: dict, after: dict, chance: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["t2v_R@1", "t2v_R@5", "v2t_R@1", "v2t_R@5"]
    fig, axes = plt.subplots(1, len(before), figsize=(5.5 * len(before), 3.8), squeeze=False)
    for ax, split in zip(axes[0], before):
        xs = range(len(metrics))
        w = 0.27
        ax.bar([x - w for x in xs], [chance[m] for m in metrics], w, label="chance", color="0.7")
        ax.bar(list(xs), [before[split][m] for m in metrics], w, label="before training")
        ax.bar([x + w for x in xs], [after[split][m] for m in metrics], w, label="after training")
        ax.set_xticks(list(xs), [m.replace("_", " ") for m in metrics])
        ax.set_ylim(0, 100)
        ax.set_ylabel("recall (%)")
        ax.set_title(f"{split} (groups of {GROUP})", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("lavila demo: zero-shot text<->video retrieval on synthetic egocentric clips")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def examples(model: torch.nn.Module, task: Any, seed: int, n: int = 4) -> list[tuple[str, str]]:
    """(query caption, caption of the top-1 retrieved held-out clip) for a few held-out queries."""
    from lavila.data.synthetic import SyntheticEgoClips
    from lavila.train.tasks.dual_encoder import embed_dataset

    data = SyntheticEgoClips("heldout", GROUP, seed=seed + 2000, num_frames=4, img_size=DEMO_OVERRIDES["img_size"],
                             tokenizer=task.tokenizer, preprocess=get_config(DEMO_MODEL).preprocess)
    video, text = embed_dataset(model, data, resolve_device(DEMO_DEVICE))
    top = (text @ video.T).argmax(dim=1)
    return [(data.combo(i).caption(), data.combo(int(top[i])).caption()) for i in range(0, GROUP, GROUP // n)][:n]


def run_demo(args: DemoConfig) -> int:
    """The demo, holding its output folder's lock throughout: a second demo (or training) started there while this
    one runs is refused instead of resuming its checkpoint and overwriting its files (``lavila.locks``)."""
    from lavila.locks import output_lock

    with output_lock(args.output_dir, "lavila demo"):
        return _run_demo(args)


def _run_demo(args: DemoConfig) -> int:
    if args.quick:
        return run_quick_demo(args)
    from lavila.demo_recipe import RecipeSizes, print_report, run_recipe

    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    print("lavila demo: the LaViLa recipe on synthetic egocentric videos with sparse human narrations "
          f"(stages resume from {out}/stage_*.done; --quick for the short version)")
    sizes = RecipeSizes(ablations=args.ablations, lm_corpus=args.lm_corpus, gate=args.gate)
    doc = run_recipe(out, sizes, seed=args.seed, progress=args.progress)
    print_report(doc, out)
    return 0


def run_quick_demo(args: DemoConfig) -> int:
    """The short demo: one tiny dual encoder pre-trained on rendered clips, retrieval before/after."""
    from lavila.atomic import atomic_write_text
    from lavila.models.checkpoint import read_checkpoint
    from lavila.train.loop import train
    from lavila.train.recipe import build_config
    from lavila.train.state import seeded_rngs
    from lavila.train.tasks import make_task

    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    if (out / "checkpoint.pt").exists():
        print(f"{out} holds a previous demo run; it is resumed (delete the folder to start over)")
    values = demo_values(str(out), args.steps, args.seed, args.batch_size, args.workers)
    values["progress"] = args.progress
    cfg = build_config(values)
    task = make_task(cfg)
    print("lavila demo: synthetic egocentric clips (hand moves a coloured object), 6 colours x 5 objects x 4 "
          "actions;\n  24 combinations held out of training. Model: tiny TimeSformer + CLIP text tower, "
          "word-level tokenizer.")
    with seeded_rngs(cfg.seed):  # the same initial weights the training loop builds
        initial = task.build_model()
    t0 = time.perf_counter()
    before = evaluate_splits(initial, task, args.eval_groups, args.seed)
    result = train(cfg)
    train_s = time.perf_counter() - t0
    trained = task.build_model()
    ckpt = read_checkpoint(out / "checkpoint.pt")
    task.load_weights(trained, ckpt["state_dict"], strict=True)
    after = evaluate_splits(trained, task, args.eval_groups, args.seed)
    chance = chance_metrics()

    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if r.get("kind") == "train"]
    k = max(len(losses) // 10, 1)
    loss_first, loss_last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    table = format_table(before, after, chance)
    print(f"\ntrained {result.global_step} steps in {train_s:.0f} s; loss {loss_first:.3f} -> {loss_last:.3f} "
          f"(mean of first/last {k} steps; chance level ln({args.batch_size}) = {math.log(args.batch_size):.3f})")
    print("\nZero-shot retrieval (%, median rank; groups of 24 clips with distinct captions; "
          f"{args.eval_groups} groups per split)\n")
    print(table)
    print("\nExamples (held-out combination query -> top-1 retrieved clip):")
    for query, got in examples(trained, task, args.seed):
        print(f"  {'OK ' if query == got else 'x  '} {query!r:48} -> {got!r}")
    plot_before_after(before, after, chance, out / "demo_retrieval.png")
    atomic_write_text(out / "demo_results.json", json.dumps(
        {"steps": result.global_step, "train_seconds": train_s, "loss_first": loss_first, "loss_last": loss_last,
         "before": before, "after": after, "chance": chance, "seed": args.seed}, indent=2))
    print(f"\nwrote {out / 'training_curves.png'}, {out / 'demo_retrieval.png'}, {out / 'metrics.jsonl'}, "
          f"{out / 'demo_results.json'}, {out / 'checkpoint.pt'}")
    return 0
