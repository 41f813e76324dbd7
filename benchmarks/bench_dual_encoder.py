"""Dual-encoder speed: a training step (forward + backward + AdamW) and a no-grad video encode, fp32 vs bf16.

Two suites, each configuration in a fresh subprocess so the peak-memory column (max RSS on CPU, max allocated on
CUDA) belongs to that configuration alone:

* ``attention``: the SDPA attention path vs an explicit softmax(QK^T)V path (and ``auto``, the default: SDPA except
  for the time attention's short sequences on CPU), with and without gradient checkpointing, in fp32;
* ``precision``: fp32 vs bf16 autocast (``torch.autocast(device, torch.bfloat16)``) for the video encode (eval,
  index) and for the train step. The bf16 train step keeps fp32 master weights and fp32 optimiser state (autocast
  only lowers the matmuls/attention), computes the loss in fp32, and steps a fused AdamW (``fused=True``; fp32
  rows also show the default foreach AdamW). No host sync inside a step. The bf16 encode row also reports the
  cosine between its embeddings and the fp32 embeddings of the same weights and clips. On CPU the fp32 foreach and
  bf16 fused train rows run once more with glibc's default allocator settings (``allocator glibc``) instead of
  the ones every ``lavila`` verb sets (``tuned``, :func:`lavila.malloc.tune_cpu_allocator`).

The attention suite runs in fp32 on CPU, plus bf16 autocast where the CPU has bf16 units (bf16 on CUDA).

Ratios are printed against the original implementation on this machine kind
(``../shared/fixtures/reference/reference_bench.md``, fp32, 2 threads) and against this code's own fp32 row
measured in the same run. Whether the CPU has bf16 units (AMX-BF16 / AVX-512-BF16) is printed in the header: without
them PyTorch emulates bf16 and the bf16 rows are *slower* than fp32 (that is why ``--precision auto`` stays fp32
there, see ``lavila.dist.cpu_has_bf16``).

    python benchmarks/bench_dual_encoder.py --threads 2                     # TSF-B, 4 x 224 px, batch 2, all rows
    python benchmarks/bench_dual_encoder.py --threads 2 --suite precision   # fp32 vs bf16 only
    python benchmarks/bench_dual_encoder.py --tiny                          # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

# The original implementation on the same machine kind (../shared/fixtures/reference/reference_bench.md).
REFERENCE_S = {("train", False): 8.64, ("train", True): 8.41, ("encode", False): 2.21}
TINY = dict(img_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4,
            text_width=32, text_layers=2, text_heads=4, embed_dim=32)


def run_one(cfg: dict) -> dict:
    import torch

    from lavila.dist import resolve_device
    from lavila.malloc import tune_cpu_allocator
    from lavila.models import create_model
    from lavila.models.losses import CLIPLoss

    if cfg["malloc"] == "tuned":  # what every `lavila` verb runs with (lavila.malloc)
        tune_cpu_allocator()
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    device = resolve_device(cfg["device"])
    overrides = dict(num_frames=cfg["frames"], norm_embed=True)
    if cfg["tiny"]:
        overrides.update(TINY)
    model = create_model(cfg["model"], **overrides).to(device)
    model.visual.set_attention_impl(cfg["attn"])
    model.set_grad_checkpointing(cfg["checkpointing"])
    model.freeze_temperature()
    img = model.config.vision.img_size
    video = torch.randn(cfg["batch"], 3, cfg["frames"], img, img, device=device)
    text = torch.randint(1, 49000, (cfg["batch"], 77), device=device)
    text[:, -1] = 49407
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["precision"])
    amp = torch.autocast(device.type, dtype=low or torch.bfloat16, enabled=low is not None)
    criterion = CLIPLoss()
    opt_kwargs = {"fused": True} if cfg["optimizer"] == "fused" else {"foreach": True}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, **opt_kwargs)

    def step() -> None:
        if cfg["what"] == "train":
            with amp:
                out = model(video, text)
            loss = criterion({k: v.float() for k, v in out.items()})["loss"]  # the loss in fp32
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), amp:
                model.encode_image(video)
        if device.type == "cuda":
            torch.cuda.synchronize()

    result: dict = {}
    if cfg["what"] == "encode" and low is not None:  # accuracy of the low-precision embeddings (untimed)
        with torch.no_grad():
            ref = model.encode_image(video).float()
            with amp:
                got = model.encode_image(video).float()
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
        result["cosine_min"] = float(cos.min())
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(cfg["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.update(kernel_s=(after.ru_stime - usage.ru_stime) / cfg["steps"],
                  faults=(after.ru_minflt - usage.ru_minflt) / cfg["steps"])
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert all(p.dtype == torch.float32 for p in params), "master weights stay fp32"
    result.update(s_per_step=statistics.median(times), times=times, peak_mb=peak_mb)
    return result


def configurations(suite: str, device: str, bf16_units: bool) -> list[dict]:
    """(what, grad ckpt, attention, precision, optimizer, allocator) rows of one suite."""
    rows = []
    if suite in ("attention", "all"):
        precisions = ["bf16"] if device == "cuda" else (["fp32", "bf16"] if bf16_units else ["fp32"])
        for precision in precisions:
            for what, ckpt, attn in [("train", False, "math"), ("train", False, "sdpa"), ("train", False, "auto"),
                                     ("train", True, "auto"), ("encode", False, "math"), ("encode", False, "sdpa"),
                                     ("encode", False, "auto")]:
                rows.append(dict(what=what, checkpointing=ckpt, attn=attn, precision=precision,
                                 optimizer="foreach", malloc="tuned"))
    if suite in ("precision", "all"):
        rows += [
            dict(what="encode", checkpointing=False, attn="auto", precision="fp32", optimizer="foreach"),
            dict(what="encode", checkpointing=False, attn="auto", precision="bf16", optimizer="foreach"),
            dict(what="train", checkpointing=False, attn="auto", precision="fp32", optimizer="foreach"),
            dict(what="train", checkpointing=False, attn="auto", precision="fp32", optimizer="fused"),
            dict(what="train", checkpointing=False, attn="auto", precision="bf16", optimizer="foreach"),
            dict(what="train", checkpointing=False, attn="auto", precision="bf16", optimizer="fused"),
        ]
        rows = [dict(r, malloc=r.get("malloc", "tuned")) for r in rows]
        if device == "cpu":  # the same steps with glibc's default allocator settings (LAVILA_MALLOC_TUNE=0)
            rows += [dict(what="train", checkpointing=False, attn="auto", precision=p, optimizer=o, malloc="glibc")
                     for p, o in (("fp32", "foreach"), ("bf16", "fused"))]
    # one measurement per distinct configuration (the suites share the fp32 'auto' rows)
    seen, out = set(), []
    for r in rows:
        key = tuple(sorted(r.items()))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def cpu_bf16_line() -> str:
    import torch

    from lavila.dist import cpu_has_bf16

    return (f"CPU bf16 units (AMX-BF16/AVX-512-BF16): {'yes' if cpu_has_bf16() else 'no'}; "
            f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="CLIP_OPENAI_TIMESFORMER_BASE")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported) after one warm-up")
    parser.add_argument("--low-precision-steps", type=int, default=None,
                        help="timed steps of the bf16 rows (default: --steps; 1 keeps slow emulated bf16 short)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--suite", choices=["attention", "precision", "all"], default="all")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--tiny", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON) and print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return ""

    import os

    import torch

    from lavila.dist import cpu_has_bf16

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    for device in devices:
        for row in configurations(args.suite, device, cpu_has_bf16()):
            steps = args.steps
            if row["precision"] != "fp32" and args.low_precision_steps is not None:
                steps = args.low_precision_steps
            cfg = dict(model=args.model, batch=args.batch, frames=args.frames, steps=steps, threads=args.threads,
                       tiny=args.tiny, device=device, **row)
            print(f"running {cfg}", file=sys.stderr)
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"configuration failed: {cfg}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((device, row, steps, res))

    def reference(device: str, row: dict) -> float | None:
        """The original's figure for this row: only at its own setting (TSF-B, batch 2, 4 frames, 2 threads, CPU)."""
        same = (device == "cpu" and not args.tiny and args.batch == 2 and args.frames == 4 and args.threads == 2
                and args.model == "CLIP_OPENAI_TIMESFORMER_BASE")
        return REFERENCE_S.get((row["what"], row["checkpointing"])) if same else None

    def own_fp32(device: str, row: dict) -> float | None:
        for d, r, _, res in rows:
            if (d == device and r["what"] == row["what"] and r["checkpointing"] == row["checkpointing"]
                    and r["attn"] == row["attn"] and r["precision"] == "fp32" and r["optimizer"] == "foreach"
                    and r["malloc"] == "tuned"):
                return res["s_per_step"]
        return None

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"{args.model}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.frames} frames, "
        f"{args.threads} CPU threads, median of the timed steps after 1 warm-up; torch {torch.__version__}; "
        f"{cpu_bf16_line()}; load average at the end {load:.1f}",
        "",
        "| device | precision | step | attention | grad ckpt | AdamW | allocator | steps | s/step | clips/s | peak MB "
        "| kernel CPU s/step | page faults/step | original s/step | x original | x own fp32 | cosine vs fp32 (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for device, row, steps, res in rows:
        s = res["s_per_step"]
        ref, own = reference(device, row), own_fp32(device, row)
        opt = row["optimizer"] if row["what"] == "train" else "-"
        cos = f"{res['cosine_min']:.5f}" if "cosine_min" in res else "-"
        lines.append(
            f"| {device} | {row['precision']}{' autocast' if row['precision'] != 'fp32' else ''} | {row['what']} "
            f"| {row['attn']} | {'on' if row['checkpointing'] else 'off'} | {opt} | {row['malloc']} | {steps} "
            f"| {s:.3f} "
            f"| {args.batch / s:.3f} | {res['peak_mb']:.0f} | {res['kernel_s']:.2f} | {res['faults']:.0f} "
            f"| {ref or '-'} | {f'{ref / s:.2f}x' if ref else '-'} "
            f"| {f'{own / s:.2f}x' if own else '-'} | {cos} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
