"""The sections of ``benchmarks/gpu_check.sh``: one GPU, a few minutes, one table; or a tiny CPU dry run.

Each section runs in its own process (``--section NAME --json FILE``), so an out-of-memory or a crash in one does not
take the others down and every peak-memory figure belongs to its section; ``--report FILE...`` prints the table.
``--mode cpu`` (the script's ``--cpu-dry-run``) runs the same code paths on CPU at a tiny size: its figures are
*not* GPU figures and the table says so.

Sections:
* ``env``: device name, torch/CUDA versions, the dense bf16 tensor peak used for MFU (known GPUs, or
  ``--peak-tflops``).
* ``tsf_b``: TSF-B (CLIP_OPENAI_TIMESFORMER_BASE), bf16 autocast train step (fwd + CLIPLoss + bwd + fused AdamW,
  fp32 master weights), batch 32 x 4 x 224 (the recipe's per-GPU batch), SDPA restricted to the flash kernel vs the
  explicit math attention; MFU = model FLOPs (counted once by ``torch.utils.flop_counter`` on the math path,
  without checkpointing) / (step time x peak).
* ``tsf_l``: TSF-L@336 (CLIP_OPENAI_TIMESFORMER_LARGE_336PX_DISTILBERT_BASE, the recipe's model), gradient
  checkpointing, batch 8, bf16, SDPA; MFU as above (recomputation not counted as useful work).
* ``narrator``: VCLM_OPENAI_TIMESFORMER_BASE_GPT2 in fp16, 64 clips x 10 sequences, top-p sampling, KV cache.
* ``decode``: random 4-frame clips from a synthetic 288 px chunk: PyAV (CPU, 1 thread) vs torchcodec on NVDEC
  (skipped, with the reason, when torchcodec is absent or has no CUDA).
* ``ddp``: ``torchrun --standalone --nproc_per_node=1 -m lavila.cli train`` on a tiny synthetic config.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; the first match wins.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX A6000", 154.8), ("RTX A5000", 111.1),
    ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("V100", None),  # V100: no bf16 units (fp16 125 TFLOP/s)
]
TINY = dict(img_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4,
            text_width=32, text_layers=2, text_heads=4, embed_dim=32)


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


def _device(mode: str):
    import torch

    if mode == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu-dry-run for the CPU code paths")
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux KiB -> GiB (process peak RSS)


# ------------------------------------------------------------------------------------------------------ sections
def section_env(args) -> dict:
    import torch

    if args.mode == "gpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        detail = f"{name}, sm {cap}, {mem:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        name = "cpu (dry run)"
        detail = f"CPU dry run, {os.cpu_count()} cores; torch {torch.__version__}"
    peak = peak_tflops(name, args.peak_tflops)
    return dict(check="environment", setting=detail, result=f"bf16 dense peak {peak or 'unknown'} TFLOP/s",
                peak_tflops=peak, device_name=name, status="ok")


def _dual_encoder_inputs(model, batch: int, frames: int, device):
    import torch

    img = model.config.vision.img_size
    video = torch.randn(batch, 3, frames, img, img, device=device)
    if model.config.text.kind == "distilbert":
        text = torch.randint(1000, model.config.text.vocab_size, (batch, 77), device=device)
        mask = torch.ones_like(text)
    else:
        text = torch.randint(1, 49000, (batch, 77), device=device)
        text[:, -1] = 49407
        mask = None
    return video, text, mask


def _train_step_fn(model, criterion, opt, video, text, mask, device, attention: str):
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model.visual.set_attention_impl("math" if attention == "math" else "sdpa")
    backend = {"flash": [SDPBackend.FLASH_ATTENTION], "math": [SDPBackend.MATH]}.get(attention)

    def step() -> None:
        kernels = sdpa_kernel(backend) if backend else contextlib.nullcontext()  # single-use: a fresh one per step
        with kernels, torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(video, text, mask) if mask is not None else model(video, text)
        loss = criterion({k: v.float() for k, v in out.items()})["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def model_flops_per_clip(model, criterion, device, frames: int, batch: int = 2) -> float:
    """fwd + bwd FLOPs of one clip, counted on the math attention path (every matmul visible), no checkpointing.

    Counts depend on shapes only, so a model built on the ``meta`` device (no weights, no arithmetic: instant even
    for TSF-L) gives the same figure as a real one; there autocast is skipped (meta has none). Also used by
    ``benchmarks/recipe_cost.py`` for the paper projection of a recipe's cost.
    """
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model.set_grad_checkpointing(False)  # the caller sets its own choice afterwards
    model.visual.set_attention_impl("math")
    video, text, mask = _dual_encoder_inputs(model, batch, frames, device)
    low = contextlib.nullcontext() if device.type == "meta" else torch.autocast(device.type, dtype=torch.bfloat16)
    counter = FlopCounterMode(display=False)
    with counter:
        with sdpa_kernel([SDPBackend.MATH]), low:
            out = model(video, text, mask) if mask is not None else model(video, text)
        loss = criterion({k: v.float() for k, v in out.items()})["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def _train_section(args, name: str, batch: int, checkpointing: bool, attentions: list[str], label: str) -> dict:
    import torch

    from lavila.models import create_model
    from lavila.models.losses import CLIPLoss

    device = _device(args.mode)
    torch.manual_seed(0)
    overrides = dict(num_frames=4, norm_embed=True)
    if args.mode == "cpu":
        overrides.update(TINY)
        batch = 2
    torch.backends.cuda.matmul.allow_tf32 = True
    model = create_model(name, **overrides).to(device)
    model.freeze_temperature()
    criterion = CLIPLoss()
    flops_clip = model_flops_per_clip(model, criterion, device, 4)
    model.set_grad_checkpointing(checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    video, text, mask = _dual_encoder_inputs(model, batch, 4, device)
    peak = args.peak_tflops_value
    rows = []
    for attention in attentions:
        step = _train_step_fn(model, criterion, opt, video, text, mask, device, attention)
        try:
            for _ in range(args.warmup):
                step()
            _sync(device)
            _reset_peak(device)
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                _sync(device)
                times.append(time.perf_counter() - t0)
        except Exception as err:  # e.g. no flash kernel for this GPU/dtype, or out of memory
            rows.append(dict(check=label, setting=f"attention {attention}", status=f"failed: {type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120]}"))
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        s = statistics.median(times)
        mfu = flops_clip * batch / s / (peak * 1e12) if peak else None
        rows.append(dict(
            check=label, setting=f"batch {batch}, 4x{model.config.vision.img_size}, bf16, attention {attention}"
            f"{', grad ckpt' if checkpointing else ''}", seconds=s, throughput=f"{batch / s:.1f} clips/s",
            mfu=mfu, peak_gb=_peak_gb(device), status="ok",
            result=f"{s * 1000:.0f} ms/step, {flops_clip / 1e9:.4g} GFLOP/clip, {flops_clip * batch / s / 1e12:.3g} "
            "TFLOP/s model",
        ))
    return dict(rows=rows)


def section_tsf_b(args) -> dict:
    return _train_section(args, "CLIP_OPENAI_TIMESFORMER_BASE", args.tsf_b_batch, False, ["flash", "math"],
                          "TSF-B train step")


def section_tsf_l(args) -> dict:
    return _train_section(args, "CLIP_OPENAI_TIMESFORMER_LARGE_336PX_DISTILBERT_BASE", 8, True, ["sdpa"],
                          "TSF-L@336 train step")


def section_narrator(args) -> dict:
    import torch

    from lavila.models import create_model
    from lavila.narrate.generate import GenerationConfig, generate

    device = _device(args.mode)
    torch.manual_seed(0)
    if args.mode == "cpu":
        from lavila.narrate.tiny import create_tiny_narrator

        model, _ = create_tiny_narrator()
        size, clips, max_len = 32, 4, 8
    else:
        model = create_model("VCLM_OPENAI_TIMESFORMER_BASE_GPT2", num_frames=4)
        size, clips, max_len = 224, args.narrator_batch, 40
    with torch.no_grad():  # open the tanh gates so the cross-attention costs what a trained model's does
        for pname, p in model.named_parameters():
            if pname.endswith(("alpha_cattn", "alpha_dense")):
                p.fill_(0.5)
    model.eval().to(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model.to(dtype)
    video = torch.randn(clips, 3, 4, size, size, device=device, dtype=dtype)
    cfg = GenerationConfig(strategy="sample", max_len=max_len, temperature=0.7, top_p=0.95, num_return_sequences=10)
    with torch.inference_mode():
        tokens = model.encode_image(video)
        generate(model, tokens[:1], GenerationConfig(max_len=4, num_return_sequences=2))  # warm-up
        _sync(device)
        _reset_peak(device)
        times = []
        for _ in range(2):
            gen = torch.Generator(device=device).manual_seed(0)
            t0 = time.perf_counter()
            generate(model, tokens, cfg, generator=gen)
            _sync(device)
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    n = clips * 10 * (max_len - 1)
    setting = f"TSF-B+GPT-2, {str(dtype)[6:]}, {clips} clips x 10 seq x {max_len - 1} tokens, top-p, KV cache"
    return dict(rows=[dict(check="narrator generate", setting=setting, seconds=s, throughput=f"{n / s:.0f} tokens/s",
                           peak_gb=_peak_gb(device), status="ok", result=f"{s:.2f} s")])


def _make_chunk(path: Path, seconds: float) -> int:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_loader import make_chunk

    return make_chunk(path, seconds)


def section_decode(args) -> dict:
    import numpy as np
    import torch

    from lavila.data.decode import open_video
    from lavila.data.sampling import get_frame_ids

    seconds = 10 if args.mode == "cpu" else 60
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        chunk = Path(tmp) / "0.mp4"
        n = _make_chunk(chunk, seconds)
        rng = np.random.default_rng(0)
        clips = []
        for _ in range(args.decode_clips):
            s = int(rng.integers(0, n - 31))
            clips.append(get_frame_ids(s, s + 30, 4, jitter=True, rng=rng))

        def run(read) -> tuple[float, float]:
            read(clips[0])  # warm-up (CUDA context, decoder init)
            t0, c0 = time.perf_counter(), time.process_time()
            for ids in clips:
                read(ids)
            return len(clips) / (time.perf_counter() - t0), (time.process_time() - c0) / len(clips)

        def pyav(ids):
            with open_video(chunk, backend="pyav") as r:
                return r.get_frames(ids)

        rate, cpu = run(pyav)
        rows.append(dict(check="decode 4-frame clips", setting=f"PyAV CPU 1 thread, {seconds} s 288p chunk",
                         throughput=f"{rate:.1f} clips/s", status="ok", result=f"{cpu * 1000:.0f} ms CPU/clip"))
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as err:
            rows.append(dict(check="decode 4-frame clips", setting="torchcodec NVDEC",
                             status=f"skipped: torchcodec unavailable ({type(err).__name__})"))
            return dict(rows=rows)
        if args.mode != "gpu" or not torch.cuda.is_available():
            rows.append(dict(check="decode 4-frame clips", setting="torchcodec NVDEC", status="skipped: no GPU"))
            return dict(rows=rows)

        def nvdec(ids):
            dec = VideoDecoder(str(chunk), device="cuda", seek_mode="approximate")
            out = dec.get_frames_at(indices=ids).data
            torch.cuda.synchronize()
            return out

        try:
            rate, cpu = run(nvdec)
            first = nvdec(clips[0]).permute(0, 2, 3, 1).float().cpu()
            ref = pyav(clips[0]).float()
            diff = (first - ref).abs().mean().item() if first.shape == ref.shape else float("nan")
            rows.append(dict(check="decode 4-frame clips", setting="torchcodec NVDEC (CUDA)",
                             throughput=f"{rate:.1f} clips/s", status="ok",
                             result=f"{cpu * 1000:.0f} ms CPU/clip, mean |diff| vs PyAV {diff:.2f}"))
        except Exception as err:
            rows.append(dict(check="decode 4-frame clips", setting="torchcodec NVDEC",
                             status=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"))
    return dict(rows=rows)


def section_ddp(args) -> dict:
    import yaml

    device = "cuda" if args.mode == "gpu" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        values = {
            "model": "CLIP_OPENAI_TIMESFORMER_BASE",
            "model_overrides": {"img_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1,
                                "vision_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2},
            "dataset": "synthetic", "pretrained": False, "project_embed_dim": 16, "norm_embed": True,
            "contrastive_use_vissl": True, "batch_size": 4, "epochs": 1, "fix_lr": True, "lr": 1e-3,
            "workers": 0, "synthetic_train_size": 8, "synthetic_eval_groups": 0, "progress": False, "plot": False,
            "print_freq": 1, "device": device, "output_dir": str(Path(tmp) / "out"),
        }
        config = Path(tmp) / "ddp_smoke.yaml"
        config.write_text(yaml.safe_dump(values))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k, None)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "--module", "lavila.cli", "train", str(config)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.ddp_timeout, cwd=REPO)
        seconds = time.perf_counter() - t0
        ckpt = Path(values["output_dir"]) / "checkpoint.pt"
        ok = proc.returncode == 0 and ckpt.exists()
        status = "ok" if ok else f"failed rc={proc.returncode}: {(proc.stderr or proc.stdout)[-300:]!r}"
    return dict(rows=[dict(check="torchrun DDP smoke", setting=f"1 process, {device}, tiny synthetic, 2 steps",
                           seconds=seconds, status=status, result=f"{seconds:.1f} s incl. start-up, checkpoint "
                           f"{'written' if ok else 'missing'}")])


SECTIONS = {"env": section_env, "tsf_b": section_tsf_b, "tsf_l": section_tsf_l, "narrator": section_narrator,
            "decode": section_decode, "ddp": section_ddp}


# ------------------------------------------------------------------------------------------------------ report
def report(files: list[Path], mode: str) -> str:
    env, rows = {}, []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except Exception as err:
            rows.append(dict(check=f.stem, status=f"no result ({type(err).__name__})"))
            continue
        if data.get("section") == "env":
            env = data
        rows.extend(data.get("rows", [data] if "check" in data else []))
    title = ("GPU check" if mode == "gpu" else
             "GPU check -- CPU DRY RUN at tiny sizes: code paths only, these are NOT GPU figures")
    lines = [f"{title}: {env.get('setting', '?')}; MFU against {env.get('peak_tflops') or 'an unknown'} TFLOP/s "
             "dense bf16", "",
             "| check | setting | result | throughput | MFU | peak memory GiB | status |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("check") == "environment":
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "-"
        peak = f"{r['peak_gb']:.1f}" if r.get("peak_gb") is not None else "-"
        lines.append(f"| {r.get('check', '?')} | {r.get('setting', '')} | {r.get('result', '')} | "
                     f"{r.get('throughput', '')} | {mfu} | {peak} | {r.get('status', '?')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--section", choices=sorted(SECTIONS))
    p.add_argument("--json", type=Path, help="write the section's result here")
    p.add_argument("--report", type=Path, nargs="+", help="print the table of these section results")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (MFU denominator)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tsf-b-batch", type=int, default=32)
    p.add_argument("--narrator-batch", type=int, default=64)
    p.add_argument("--decode-clips", type=int, default=20)
    p.add_argument("--ddp-timeout", type=int, default=240)
    args = p.parse_args(argv)
    if args.report:
        print(report(args.report, args.mode))
        return 0
    if not args.section:
        p.error("--section or --report is required")
    if args.mode == "cpu":
        args.steps, args.warmup, args.decode_clips = min(args.steps, 2), min(args.warmup, 1), min(args.decode_clips, 4)
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    env_name = ""
    if args.mode == "gpu":
        import torch

        env_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    # in a dry run only an explicit --peak-tflops gives an MFU (to exercise the arithmetic); never a made-up peak
    args.peak_tflops_value = peak_tflops(env_name, args.peak_tflops) if args.mode == "gpu" else args.peak_tflops
    try:
        result = SECTIONS[args.section](args)
    except Exception as err:
        result = dict(rows=[dict(check=args.section, status=f"failed: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:160] if str(err) else ''}")])
    result["section"] = args.section
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
