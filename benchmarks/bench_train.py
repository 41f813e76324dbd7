"""Training-step throughput of the dual encoder: synthetic tensors vs the real data pipeline in the loop.

One step = what ``lavila train`` does per optimiser step: forward, CLIPLoss (VISSL), backward, AdamW with the
reference parameter groups, logit-scale clamp. Two input paths:

* ``tensors``:  random normalised clips and token ids already in memory (model cost only);
* ``pipeline``: clips decoded from a prepared H.264 video through ``lavila.data`` (Ego4D dataset class, PyAV,
  chunked loader, RandomResizedCrop + normalisation), loaded in the main process (``--workers 0``) so that the
  loader's share of a step is visible.

    python benchmarks/bench_train.py                 # TSF-B, 4 x 224 px, batch 2 (the reference's 8.64 s/step)
    python benchmarks/bench_train.py --tiny          # smoke run with a tiny model at 32 px

Prints a markdown table (median over the timed steps, after warm-up steps).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TINY = {"img_size": 32, "patch_size": 8, "vision_width": 64, "vision_layers": 2, "vision_heads": 4,
        "text_width": 64, "text_layers": 2, "text_heads": 4}


def write_video(path: Path, seconds: float, fps: int, height: int, width: int) -> None:
    """An H.264 clip of rendered synthetic egocentric frames, resized to the Ego4D chunks' 288 px height."""
    import av

    from lavila.data.synthetic import render_clip, split_combos

    rng = np.random.default_rng(0)
    n = int(seconds * fps)
    frames = render_clip(split_combos("train")[0], rng, num_frames=n, size=96, distractor_prob=1.0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for f in frames:
            big = torch.nn.functional.interpolate(torch.from_numpy(f).permute(2, 0, 1)[None].float(),
                                                  size=(height, width), mode="bilinear")
            img = big[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="CLIP_OPENAI_TIMESFORMER_BASE")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing")
    parser.add_argument("--modes", nargs="+", default=["tensors", "pipeline"], choices=["tensors", "pipeline"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model at 32 px (smoke test)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="as `lavila train --precision` (auto: bf16 where the hardware has bf16 units)")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's default allocator settings instead of the ones `lavila` verbs set")
    args = parser.parse_args()
    if not args.glibc_malloc:
        from lavila.malloc import tune_cpu_allocator

        tune_cpu_allocator()  # what `lavila train` runs with

    from torch.utils.data import DataLoader

    from lavila.data.synthetic import synthetic_tokenizer
    from lavila.dist import resolve_device
    from lavila.train.loop import amp_settings
    from lavila.train.optim import build_optimizer, clamp_logit_scale
    from lavila.train.recipe import build_config
    from lavila.train.state import ResumableDistributedSampler, SeededDataset
    from lavila.train.tasks import make_task

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    overrides = dict(TINY) if args.tiny else {}
    values = {"model": args.model, "model_overrides": overrides, "pretrained": False, "norm_embed": True,
              "contrastive_use_vissl": True, "freeze_temperature": True, "clip_length": args.frames,
              "batch_size": args.batch_size, "use_checkpoint": args.use_checkpoint, "workers": args.workers,
              "dataset": "ego4d", "metadata": "bench_train.pkl", "fix_lr": True, "device": args.device,
              "precision": args.precision}
    cfg = build_config(values)
    task = make_task(cfg)
    tokenizer = synthetic_tokenizer(context_length=77)
    task._tokenizer = tokenizer  # word ids are valid CLIP ids; the CLIP BPE file is not needed to time a step
    model = task.build_model().to(device)
    criterion = task.build_criterion().to(device)
    optimizer = build_optimizer(task.param_groups(model, criterion), cfg.lr, cfg.betas, cfg.eps, cfg.wd)
    img = model.config.vision.img_size
    rows = []
    use_amp, amp_dtype = amp_settings(cfg, device)  # the Trainer's rule
    precision = str(amp_dtype).removeprefix("torch.") if use_amp else "fp32"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)

    def step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            out = task.compute_loss(model, criterion, batch)
        scaler.scale(out["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(model)

    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            if mode == "tensors":
                text = tokenizer(["#C C moves the red ball to the left"] * args.batch_size)
                fixed = {"video": torch.randn(args.batch_size, 3, args.frames, img, img), "text": text}
                batches = itertools.repeat(fixed)
            else:
                root = Path(tmp)
                write_video(root / "clip.mp4", seconds=10, fps=30, height=288, width=384)
                meta = [("clip", float(s), float(s) + 1.0, "#C C moves the red ball to the left") for s in range(9)]
                cfg.metadata = "bench_train.pkl"
                task.opts.video_chunk_len, task.opts.video_fps = -1, 30
                task.cfg.root = str(root)
                from lavila.data.datasets import build_pretrain_dataset

                data = SeededDataset(build_pretrain_dataset(root, meta, **task._ego4d_kwargs(is_training=True)), 0)
                sampler = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=0)
                loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                    collate_fn=task.collate, drop_last=True)

                def forever(loader=loader, sampler=sampler):
                    epoch = 0
                    while True:
                        sampler.set_epoch(epoch)
                        yield from loader
                        epoch += 1

                batches = forever()
            times, data_times = [], []
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                batch = {k: v.to(device) for k, v in next(batches).items()}
                t1 = time.perf_counter()
                step(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t2 = time.perf_counter()
                if i >= args.warmup:
                    times.append(t2 - t0)
                    data_times.append(t1 - t0)
            med = statistics.median(times)
            rows.append((mode, med, statistics.median(data_times), args.batch_size / med, peak_memory_mb(device)))
            print(f"{mode}: {med:.2f} s/step", file=sys.stderr)

    name = args.model + (" (tiny)" if args.tiny else "")
    print(f"\n{name}, batch {args.batch_size}, {args.frames} x {img} px, fwd + bwd + AdamW, {precision}"
          f" (--precision {args.precision}), allocator {'glibc default' if args.glibc_malloc else 'tuned'}"
          f"{', grad checkpointing' if args.use_checkpoint else ''}; {args.threads} threads, {device}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"median of {args.steps} steps after {args.warmup} warm-up\n")
    print("| input | s/step | of which data | clips/s | peak memory (MB) |")
    print("|---|---|---|---|---|")
    for mode, med, data_s, cps, mem in rows:
        label = "synthetic tensors" if mode == "tensors" else f"video -> lavila.data pipeline ({args.workers} workers)"
        print(f"| {label} | {med:.3f} | {data_s:.3f} ({100 * data_s / med:.0f} %) | {cps:.3f} | {mem:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
