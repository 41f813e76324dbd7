"""Paper projection of the LaViLa-B pretraining recipe's cost on N GPUs from a model FLOP count and an MFU.

No GPU is needed: the model is built on the ``meta`` device (shapes only, no weights, no arithmetic) and
``torch.utils.flop_counter.FlopCounterMode`` counts one clip's forward + CLIP loss + backward on the math attention
path (:func:`gpu_check.model_flops_per_clip`, the count ``gpu_check.sh`` divides by its measured step time for MFU).
Then

    wall seconds = FLOPs per clip x clips of the recipe / (GPUs x dense bf16 peak x MFU),  GPU-h = GPUs x wall h

for a table of MFUs (the measured one from ``benchmarks/gpu_check.sh`` with ``--mfu``), next to the original's
1824 V100 GPU-h (its implied MFU against the V100's 125 TFLOP/s fp16 peak is printed too) and AVION's 130-260 A5000
GPU-h. The recipe (``../shared/spec/LAVILA.md`` §8.2, §2): LaViLa TSF-B, 5 epochs, global batch 1024; an epoch is the
rephrased human narrations (~4.0M clips, AVION's count, unverified) plus the narrator's ``return_10`` pickle (one
entry per clip, ~4.0M), i.e. ~8.0M clips; 4 frames at 224 px, 77 text tokens. The data pipeline must then sustain
clips / wall seconds: ``--loader-clips-per-core-s`` (from ``benchmarks/bench_loader.py``) turns that into cores.

    python benchmarks/recipe_cost.py                          # TSF-B, MFU 30/40/50 %, 8 x H100
    python benchmarks/recipe_cost.py --mfu 0.37 --loader-clips-per-core-s 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_check import PEAK_BF16_TFLOPS, model_flops_per_clip  # noqa: E402

CLIPS_PER_EPOCH = 4.0e6 + 4.0e6  # rephrased human narrations + narrator return_10 (one entry per clip each)
EPOCHS = 5
ORIGINAL_GPU_H = 1824.0  # V100, AVION's README table (spec §12.4)
V100_FP16_TFLOPS = 125.0  # dense fp16 tensor peak (V100 SXM2): the original ran fp16 AMP
AVION_GPU_H = (130.0, 260.0)  # A5000 (issue #12)


def peak(name: str) -> float:
    """Dense bf16 peak in TFLOP/s of a GPU named as in ``gpu_check.PEAK_BF16_TFLOPS``."""
    for key, value in PEAK_BF16_TFLOPS:
        if key == name and value:
            return value
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")


def count_flops(model_name: str = "CLIP_OPENAI_TIMESFORMER_BASE", frames: int = 4, device: str = "meta",
                **overrides) -> dict[str, float]:
    """Per-clip FLOPs of ``model_name``: ``visual`` and ``text`` forward alone, and ``train`` = forward + CLIP loss +
    backward of both towers (what one training clip costs). ``device="cpu"`` runs the same count on real tensors
    (slow at full size; the tests compare both on a tiny model). Meta is also the *right* device for the forward
    counts: on CPU under ``no_grad`` ``nn.MultiheadAttention`` (the text tower) takes a fused fast path whose
    attention matmuls ``FlopCounterMode`` does not see."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lavila.models import create_model
    from lavila.models.losses import CLIPLoss

    dev = torch.device(device)
    with dev:
        model = create_model(model_name, num_frames=frames, norm_embed=True, **overrides)
    model.freeze_temperature()  # the recipe's --freeze-temperature
    train = model_flops_per_clip(model, CLIPLoss(), dev, frames, batch=1)
    cfg = model.config
    video = torch.randn(1, 3, frames, cfg.vision.img_size, cfg.vision.img_size, device=dev)
    text = torch.randint(1, max(cfg.text.vocab_size - 1, 2), (1, cfg.text.context_length), device=dev)
    forward = {}
    for key, run in (("visual", lambda: model.encode_image(video)), ("text", lambda: model.encode_text(text))):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            run()
        forward[key] = float(counter.get_total_flops())
    return {**forward, "train": float(train)}


def projection(flops_per_clip: float, clips: float, gpus: int, peak_tflops: float, mfu: float) -> dict[str, float]:
    """Wall hours, GPU-hours and the data rate (clips/s) a run of ``clips`` needs at ``mfu`` of ``peak_tflops``."""
    seconds = flops_per_clip * clips / (gpus * peak_tflops * 1e12 * mfu)
    return {"wall_h": seconds / 3600, "gpu_h": gpus * seconds / 3600, "clips_per_s": clips / seconds}


def report(flops: dict[str, float], clips: float, gpus: int, gpu: str, peak_tflops: float, mfus: list[float],
           loader_per_core: float | None) -> str:
    total = flops["train"] * clips
    implied = total / (ORIGINAL_GPU_H * 3600 * V100_FP16_TFLOPS * 1e12)
    lines = [
        f"FLOPs per clip: visual forward {flops['visual'] / 1e9:.4g} G, text forward {flops['text'] / 1e9:.4g} G, "
        f"train (fwd + loss + bwd) {flops['train'] / 1e9:.4g} G",
        f"recipe: {clips / 1e6:.0f}M clips ({EPOCHS} epochs x {CLIPS_PER_EPOCH / 1e6:.1f}M) = {total:.3g} FLOPs",
        f"original: {ORIGINAL_GPU_H:.0f} V100 GPU-h (implied MFU {implied:.1%} of {V100_FP16_TFLOPS:.0f} TFLOP/s "
        f"fp16); AVION: {AVION_GPU_H[0]:.0f}-{AVION_GPU_H[1]:.0f} A5000 GPU-h",
        "",
        f"| MFU | {gpus} x {gpu} wall h | {gpu} GPU-h | vs original's GPU-h | data clips/s needed"
        + (" | loader cores needed |" if loader_per_core else " |"),
        "|---|---|---|---|---|" + ("---|" if loader_per_core else ""),
    ]
    for mfu in mfus:
        p = projection(flops["train"], clips, gpus, peak_tflops, mfu)
        row = (f"| {mfu:.0%} | {p['wall_h']:.1f} | {p['gpu_h']:.0f} | {ORIGINAL_GPU_H / p['gpu_h']:.0f}x fewer "
               f"| {p['clips_per_s']:.0f} |")
        if loader_per_core:
            row += f" {p['clips_per_s'] / loader_per_core:.0f} |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="CLIP_OPENAI_TIMESFORMER_BASE")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu", default="H100", help="a name of gpu_check.PEAK_BF16_TFLOPS (H100 = SXM, 989.4 TFLOP/s)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, instead of --gpu's")
    p.add_argument("--mfu", type=float, nargs="+", default=[0.3, 0.4, 0.5], help="fractions, e.g. a measured 0.37")
    p.add_argument("--clips", type=float, default=EPOCHS * CLIPS_PER_EPOCH)
    p.add_argument("--loader-clips-per-core-s", type=float, default=None)
    p.add_argument("--tiny", action="store_true", help="a tiny model (smoke test; the figures mean nothing)")
    args = p.parse_args(argv)
    overrides = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                     text_layers=1, text_heads=2, embed_dim=16) if args.tiny else {}
    flops = count_flops(args.model, args.frames, **overrides)
    text = report(flops, args.clips, args.gpus, args.gpu, args.peak_tflops or peak(args.gpu), args.mfu,
                  args.loader_clips_per_core_s)
    print(text)
    return text


if __name__ == "__main__":
    main()
