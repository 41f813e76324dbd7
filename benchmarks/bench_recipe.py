"""The demo recipe's comparison over several seeds: baseline vs LaViLa (and the ablations), mean +- std.

Each seed runs the whole ``lavila demo`` recipe (:func:`lavila.demo_recipe.run_recipe`: a new world, new models)
into ``<output-dir>/seed_<s>``; finished stages are skipped, so an interrupted benchmark resumes. Prints one
markdown table of held-out retrieval (v2t R@1/R@5/MedR, t2v mAP; unseen and seen combinations, chance rows) and
the narrator's caption metrics, each as mean +- std over the seeds.

    python benchmarks/bench_recipe.py --seeds 0 1 2                 # the docs' table (~ 3 x the demo's time)
    python benchmarks/bench_recipe.py --seeds 0 1 2 --tiny           # smoke run (numbers mean nothing)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavila.demo_recipe import RecipeSizes, run_recipe, tiny_sizes  # noqa: E402

METRICS = ["v2t_R@1", "v2t_R@5", "v2t_MedR", "t2v_mAP"]
NLG = ["Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(docs: list[dict]) -> str:
    retrievals = [d["stages"]["evaluate"]["retrieval"] for d in docs]
    variants = list(retrievals[0])
    splits = [s for s in retrievals[0][variants[0]] if not s.startswith("chance")]
    lines = ["| split | model | " + " | ".join(m.replace("_", " ") for m in METRICS) + " |",
             "|" + "---|" * (len(METRICS) + 2)]
    for split in splits:
        rows = [("chance", [r[variants[0]][f"chance ({split})"] for r in retrievals])]
        rows += [(v, [r[v][split] for r in retrievals]) for v in variants]
        for name, per_seed in rows:
            lines.append(f"| {split} | {name} | " + " | ".join(mean_std([p[m] for p in per_seed]) for m in METRICS)
                         + " |")
    nlg = [d["stages"]["evaluate"]["narrator"]["metrics"] for d in docs]
    lines += ["", "| narrator (held-out test moments) | " + " | ".join(NLG) + " |", "|---|" + "---|" * len(NLG),
              "| mean ± std | " + " | ".join(mean_std([m[k] for m in nlg]) for k in NLG) + " |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", type=Path, default=Path("bench_recipe_out"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = tiny_sizes() if args.tiny else RecipeSizes(ablations=not args.no_ablations)
    docs = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        docs.append(run_recipe(args.output_dir / f"seed_{seed}", sizes, seed=seed, progress=False))
    print(f"\n{len(docs)} seeds ({', '.join(map(str, args.seeds))}), {time.perf_counter() - t0:.0f} s this run; "
          f"retrieval in %, narrator metrics x 100 below\n")
    for d in docs:  # NLG metrics printed in percent too, as the retrieval numbers
        m = d["stages"]["evaluate"]["narrator"]["metrics"]
        d["stages"]["evaluate"]["narrator"]["metrics"] = {k: 100 * m[k] for k in NLG if k in m}
    text = table(docs)
    print(text)
    (args.output_dir / "bench_recipe.md").write_text(text + "\n")
    (args.output_dir / "bench_recipe.json").write_text(json.dumps([d["stages"]["evaluate"] for d in docs],
                                                                  indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
