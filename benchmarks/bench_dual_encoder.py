"""Dual-encoder speed: a training step (forward + backward + AdamW) and a no-grad video encode.

Compares the SDPA attention path with an explicit softmax(QK^T)V path (and ``auto``, the default: SDPA except for
the time attention's short sequences on CPU), with and without gradient checkpointing,
in fp32 on CPU and (when a GPU is present) bf16 autocast on CUDA. Each configuration runs in a fresh subprocess so
the peak-memory column (max RSS on CPU, max allocated on CUDA) belongs to that configuration alone.

    python benchmarks/bench_dual_encoder.py                 # TSF-B, 4 x 224 px, batch 2 (the reference's setting)
    python benchmarks/bench_dual_encoder.py --tiny          # a seconds-long smoke run
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


def run_one(cfg: dict) -> dict:
    import torch

    from lavila.dist import resolve_device
    from lavila.models import create_model
    from lavila.models.losses import CLIPLoss

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    device = resolve_device(cfg["device"])
    overrides = dict(num_frames=cfg["frames"], norm_embed=True)
    if cfg["tiny"]:
        overrides.update(img_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4,
                         text_width=32, text_layers=2, text_heads=4, embed_dim=32)
    model = create_model(cfg["model"], **overrides).to(device)
    model.visual.set_attention_impl(cfg["attn"])
    model.set_grad_checkpointing(cfg["checkpointing"])
    model.freeze_temperature()
    img = model.config.vision.img_size
    video = torch.randn(cfg["batch"], 3, cfg["frames"], img, img, device=device)
    text = torch.randint(1, 49000, (cfg["batch"], 77), device=device)
    text[:, -1] = 49407
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg["bf16"])
    criterion = CLIPLoss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        if cfg["what"] == "train":
            with amp:
                loss = criterion(model(video, text))["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), amp:
                model.encode_image(video)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(cfg["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s_per_step": statistics.median(times), "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="CLIP_OPENAI_TIMESFORMER_BASE")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported) after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON) and print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for what, ckpt, attn in [("train", False, "math"), ("train", False, "sdpa"), ("train", False, "auto"),
                                 ("train", True, "auto"), ("encode", False, "math"), ("encode", False, "sdpa"),
                                 ("encode", False, "auto")]:
            cfg = dict(model=args.model, batch=args.batch, frames=args.frames, steps=args.steps, threads=args.threads,
                       tiny=args.tiny, device=device, what=what, checkpointing=ckpt, attn=attn, bf16=True)
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"configuration failed: {cfg}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = REFERENCE_S.get((what, ckpt)) if device == "cpu" and not args.tiny and args.batch == 2 else None
            rows.append((device, what, attn, ckpt, res, ref))
    precision = {"cpu": "fp32", "cuda": "bf16 autocast"}
    print(f"\n{args.model}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.frames} frames, "
          f"{args.threads} CPU threads, median of {args.steps} steps\n")
    print("| device | precision | step | attention | grad ckpt | s/step | clips/s | peak MB | reference s/step "
          "| speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for device, what, attn, ckpt, res, ref in rows:
        s = res["s_per_step"]
        speed = f"{ref / s:.2f}x" if ref else "-"
        print(f"| {device} | {precision[device]} | {what} | {attn} | {'on' if ckpt else 'off'} | {s:.3f} | "
              f"{args.batch / s:.3f} | {res['peak_mb']:.0f} | {ref or '-'} | {speed} |")


if __name__ == "__main__":
    main()
