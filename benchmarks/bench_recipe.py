"""The demo recipe over several seeds, paired: LaViLa - baseline per seed with a 95 % interval, per split.

Each seed runs the whole ``lavila demo`` recipe (:func:`lavila.demo_recipe.run_recipe`: a new world, new models)
into ``<output-dir>/seed_<s>``; finished stages are skipped, so an interrupted benchmark resumes. Within a seed every
dual encoder shares the world, the initial weights, the sampler seed and the exact number of optimiser steps, so
the per-seed difference is a paired comparison. Prints, in markdown:

* the validation gate of each seed (docs/demo.md, Protocol) and the narrator's exact-combination rate per group;
* held-out retrieval (v2t R@1/R@5/MedR, t2v mAP; unseen and seen combinations, chance rows), mean +- std;
* the paired difference LaViLa - baseline (and each ablation - baseline): mean with its 95 % Student-t interval;
* the narrator's caption metrics, mean +- std.

    python benchmarks/bench_recipe.py --seeds 0 1 2 3 4          # the docs' table (~ 5 x the demo's time)
    python benchmarks/bench_recipe.py --seeds 0 1 --tiny          # smoke run (numbers mean nothing)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavila.demo_recipe import EXACT_GROUPS, RecipeSizes, ValidationGateError, run_recipe, tiny_sizes  # noqa: E402

METRICS = ["v2t_R@1", "v2t_R@5", "v2t_MedR", "t2v_mAP"]
NLG = ["Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
BASELINE = "baseline (human)"
# two-sided 95 % quantiles of Student's t for 1..10 degrees of freedom (any statistics table); 1.96 beyond 30
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def t_quantile(df: int) -> float:
    if df <= len(T975):
        return T975[df - 1]
    return 2.042 if df <= 30 else 1.96  # 2.042 is df = 30: a conservative value for 11..30


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def paired_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of the per-seed differences and its 95 % Student-t interval (nan bounds for one seed)."""
    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return m, math.nan, math.nan
    half = t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, m - half, m + half


def splits_of(retrievals: list[dict]) -> list[str]:
    return [s for s in retrievals[0][BASELINE] if not s.startswith("chance")]


def table(docs: list[dict]) -> str:
    retrievals = [d["stages"]["evaluate"]["retrieval"] for d in docs]
    variants = list(retrievals[0])
    lines = ["| split | model | " + " | ".join(m.replace("_", " ") for m in METRICS) + " |",
             "|" + "---|" * (len(METRICS) + 2)]
    for split in splits_of(retrievals):
        rows = [("chance", [r[BASELINE][f"chance ({split})"] for r in retrievals])]
        rows += [(v, [r[v][split] for r in retrievals]) for v in variants]
        for name, per_seed in rows:
            lines.append(f"| {split} | {name} | " + " | ".join(mean_std([p[m] for p in per_seed]) for m in METRICS)
                         + " |")
    return "\n".join(lines)


def paired_table(docs: list[dict]) -> str:
    retrievals = [d["stages"]["evaluate"]["retrieval"] for d in docs]
    lines = [f"| split | model - baseline (paired, {len(docs)} seeds) | "
             + " | ".join(f"{m.replace('_', ' ')} [95 % CI]" for m in METRICS) + " |",
             "|" + "---|" * (len(METRICS) + 2)]
    for split in splits_of(retrievals):
        for v in (v for v in retrievals[0] if v != BASELINE):
            cells = []
            for m in METRICS:
                mean, lo, hi = paired_interval([r[v][split][m] - r[BASELINE][split][m] for r in retrievals])
                cells.append(f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]")
            lines.append(f"| {split} | {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gate_table(docs: list[dict]) -> str:
    lines = ["| seed | baseline val seen v2t R@1 | " + " | ".join(f"narrator exact, {g}" for g in EXACT_GROUPS)
             + " | LM-prior ablation: unnarrated, unseen |", "|" + "---|" * (3 + len(EXACT_GROUPS))]
    for d in docs:
        st = d["stages"]
        checks = st["validate"]["checks"]
        rates = st["narrate"]["exact_combination_rate"]
        abl = next((s for k, s in st.items() if k.startswith("narrate_lm_")), None)
        abl_rate = abl["exact_combination_rate"][EXACT_GROUPS[2]] if abl else None
        lines.append(f"| {d['seed']} | {checks['baseline val seen v2t R@1']['value']:.1f} % | "
                     + " | ".join("-" if rates[g] is None else f"{100 * rates[g]:.1f} % ({st['narrate']['counts'][g]})"
                                  for g in EXACT_GROUPS)
                     + f" | {'-' if abl_rate is None else f'{100 * abl_rate:.1f} %'} |")
    return "\n".join(lines)


def nlg_table(docs: list[dict]) -> str:
    nlg = [d["stages"]["evaluate"]["narrator"]["metrics"] for d in docs]
    if not all(nlg):
        return "(narrator caption metrics left out: pycocoevalcap not installed)"
    return "\n".join(["| narrator (held-out test moments, x 100) | " + " | ".join(NLG) + " |",
                      "|---|" + "---|" * len(NLG),
                      "| mean ± std | " + " | ".join(mean_std([100 * m[k] for m in nlg]) for k in NLG if k in nlg[0])
                      + " |"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output-dir", type=Path, default=Path("bench_recipe_out"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = tiny_sizes() if args.tiny else RecipeSizes(ablations=not args.no_ablations)
    docs, failed = [], []
    t0 = time.perf_counter()
    for seed in args.seeds:
        try:
            docs.append(run_recipe(args.output_dir / f"seed_{seed}", sizes, seed=seed, progress=False))
        except ValidationGateError as err:  # the protocol: such a seed has no LaViLa result to report
            failed.append(f"seed {seed}: {err}")
    print(f"\n{len(docs)} seeds ({', '.join(str(d['seed']) for d in docs)}), {time.perf_counter() - t0:.0f} s this "
          "run; retrieval in %\n")
    for line in failed:
        print(f"gate failed, {line}")
    if not docs:
        return 1
    text = "\n\n".join([gate_table(docs), table(docs), paired_table(docs), nlg_table(docs)])
    print(text)
    (args.output_dir / "bench_recipe.md").write_text(text + "\n")
    (args.output_dir / "bench_recipe.json").write_text(json.dumps(
        [{"seed": d["seed"], "validate": d["stages"]["validate"], "narrate": d["stages"]["narrate"],
          "evaluate": d["stages"]["evaluate"]} for d in docs], indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
