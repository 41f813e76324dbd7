"""Narrator generation speed: tokens/s and peak memory, KV cache vs the reference's full recompute.

    python benchmarks/bench_narrator.py            # VCLM_OPENAI_TIMESFORMER_BASE_GPT2, random weights, CPU
    python benchmarks/bench_narrator.py --tiny     # seconds-long smoke run on a tiny model

Setting of ``fixtures/reference/reference_bench.md``: 4 frames at 224 px, top-p 0.95, T 0.7, 10 return sequences,
``max_len`` 20 and 40 (BOS included, so 19 and 39 generated tokens per sequence; every generated position of every
sequence counts, no early stop), 2 threads, fp32, median of ``--repeats`` timed runs after one short warm-up. The
reference figures are 15.9 s (max_len 20) and 42.2 s (max_len 40) for one clip. Memory: on CUDA the peak allocated
by torch; on CPU the peak resident set size of the process sampled every 5 ms during generation (it includes the
model's weights).

Sampling as ``lavila narrate`` does it (``--sampler per-clip``, the default): each clip draws from its own seeded
generator (``lavila.narrate.narrate.clip_generator``), by inverse CDF. ``--sampler shared`` times the reference's
sampler instead: one ``torch.multinomial`` over the batch with one generator (what ``generate(generator=...)``
does; it draws an exponential per vocabulary entry and row at every step). Both sample after the same warpers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavila.dist import resolve_device  # noqa: E402
from lavila.malloc import tune_cpu_allocator  # noqa: E402
from lavila.models import create_model  # noqa: E402
from lavila.narrate.generate import GenerationConfig, generate  # noqa: E402
from lavila.narrate.narrate import clip_generator  # noqa: E402

REFERENCE_S = {20: 15.9, 40: 42.2}  # one clip, 10 sequences, reference_bench.md


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or sampled RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self.peak = rss_mb()

            def sample() -> None:
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, rss_mb())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_mb())


def build(tiny: bool, device: torch.device, half: bool):
    if tiny:
        from lavila.narrate.tiny import create_tiny_narrator

        model, _ = create_tiny_narrator()
        size = 32
    else:
        model = create_model("VCLM_OPENAI_TIMESFORMER_BASE_GPT2", num_frames=4)
        size = 224
    with torch.no_grad():  # open the tanh gates so the cross-attention costs what a trained model's does
        for name, p in model.named_parameters():
            if name.endswith(("alpha_cattn", "alpha_dense")):
                p.fill_(0.5)
    model.eval().to(device)
    if half:
        model.half()
    return model, size


def timed(fn, repeats: int, device: torch.device, warmup: bool = True) -> list[float]:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def top_p_table(rows: int, top_p: float = 0.95, repeats: int = 10) -> str:
    """Per-step cost of top-p filtering a ``[rows, 50257]`` batch: HF's sort vs ``lavila.narrate.nucleus``.

    Two regimes of logits: peaked (a trained narrator's: a few tokens hold the mass, the nucleus is small) and flat
    (a random-weight GPT-2's, as in the generation rows above: ~40k of 50k tokens stay in the nucleus).
    """
    from transformers.generation.logits_process import TopPLogitsWarper

    from lavila.narrate.nucleus import NucleusLogitsWarper

    g = torch.Generator().manual_seed(0)
    lines = [f"top-p {top_p} filter of {rows} x 50257 logits per decoding step, median of {repeats}:", "",
             "| logits | nucleus size (median) | HF TopPLogitsWarper (sort) ms | lavila nucleus ms | speed-up | "
             "same mask |", "|---|---|---|---|---|---|"]
    for name, scale in (("peaked (trained-like)", 6.0), ("flat (random weights)", 0.02)):
        logits = torch.randn(rows, 50257, generator=g) * scale
        hf, ours = TopPLogitsWarper(top_p=top_p), NucleusLogitsWarper(top_p)
        times = {}
        for label, warper in (("hf", hf), ("ours", ours)):
            warper(None, logits)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                warper(None, logits)
                ts.append(time.perf_counter() - t0)
            times[label] = statistics.median(ts) * 1000
        want, got = hf(None, logits).isinf(), ours(None, logits).isinf()
        kept = int((~want).sum(dim=1).median())
        lines.append(f"| {name} | {kept} | {times['hf']:.1f} | {times['ours']:.1f} "
                     f"| {times['hf'] / times['ours']:.1f}x | {'yes' if torch.equal(want, got) else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--use-half", action="store_true", help="fp16 (CUDA only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-lens", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--batch-clips", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--return-sequences", type=int, default=10)
    parser.add_argument("--no-recompute", action="store_true", help="skip the slow reference-style path")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="precision(s) of the visual encode and the generation: the weights' dtype, as "
                             "`lavila narrate --precision`; each precision is timed in the same run")
    parser.add_argument("--sampler", choices=["per-clip", "shared"], default="per-clip",
                        help="per-clip seeded generators, as `lavila narrate` (default), or the reference's one "
                             "shared torch.multinomial stream")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's default allocator settings instead of the ones `lavila` verbs set")
    args = parser.parse_args(argv)
    if not args.glibc_malloc:
        tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model, size = build(args.tiny, device, args.use_half)
    dtype = next(model.parameters()).dtype
    videos = {b: torch.randn(b, 3, 4, size, size, device=device, dtype=dtype) for b in args.batch_clips}

    import copy

    rows = []
    enc_times: dict[str, list[float]] = {}
    fp32_model = model
    for precision in args.precisions:
        # as `lavila narrate --precision bf16`: bf16 *weights* (generation reads every weight at every token),
        # not autocast over the fp32 ones
        model = fp32_model if precision == "fp32" else copy.deepcopy(fp32_model).to(torch.bfloat16)
        videos = {b: v.to(next(model.parameters()).dtype) for b, v in videos.items()}
        with torch.inference_mode():
            enc_times[precision] = timed(lambda m=model, v=videos[1]: m.encode_image(v), args.repeats, device)
            tokens = {b: model.encode_image(v) for b, v in videos.items()}
            # one short warm-up of both paths instead of a warm-up per configuration (the recompute path is slow)
            for use_cache in (True, False):
                generate(model, tokens[1], GenerationConfig(max_len=4, num_return_sequences=2, use_cache=use_cache))
            for max_len in args.max_lens:
                for clips in args.batch_clips:
                    for use_cache in ([True] if args.no_recompute else [True, False]):
                        cfg = GenerationConfig(strategy="sample", max_len=max_len, temperature=0.7, top_p=0.95,
                                               num_return_sequences=args.return_sequences, use_cache=use_cache)
                        def sampling(clips=clips) -> dict:
                            if args.sampler == "shared":
                                return {"generator": torch.Generator(device=device).manual_seed(0)}
                            return {"generators": [clip_generator(0, i) for i in range(clips)]}

                        with PeakMemory(device) as mem:
                            times = timed(lambda m=model, cfg=cfg, visual=tokens[clips], sampling=sampling: generate(
                                m, visual, cfg, **sampling()), args.repeats, device, warmup=False)
                        seconds = statistics.median(times)
                        n_tokens = clips * args.return_sequences * (max_len - 1)
                        ref = REFERENCE_S.get(max_len) if not args.tiny else None
                        rows.append((precision, max_len, clips, use_cache, seconds, n_tokens / seconds, mem.peak,
                                     ref))
                        print(f"{precision} max_len {max_len} clips {clips} cache {use_cache}: {seconds:.2f} s",
                              file=sys.stderr)

    name = "tiny random narrator" if args.tiny else "VCLM_OPENAI_TIMESFORMER_BASE_GPT2 (random weights)"
    mem_kind = "peak CUDA MB" if device.type == "cuda" else "peak RSS MB"
    print(f"\n{name}, {device.type}, {args.threads} threads, {str(dtype).removeprefix('torch.')}, 4 frames, "
          f"{args.return_sequences} sequences/clip, top-p 0.95 T 0.7, {args.sampler} sampler, allocator "
          f"{'glibc default' if args.glibc_malloc else 'tuned'}; visual encode of 1 clip: "
          + ", ".join(f"{p} {statistics.median(t):.2f} s" for p, t in enc_times.items()) + " (reference 1.59 s, fp32)\n"
          "speed-up = tokens/s over the reference's 10 x (max_len - 1) tokens of one clip in the reference time "
          "(fp32, full recompute): for 8 clips the batch's tokens/s against that one-clip rate\n")
    print(f"| precision | max_len (tokens/seq) | clips | KV cache | time (s) | tokens/s | {mem_kind} | "
          "reference tokens/s (1 clip) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for precision, max_len, clips, cache, seconds, tps, peak, ref in rows:
        ref_tps = args.return_sequences * (max_len - 1) / ref if ref else None
        speed = f"{tps / ref_tps:.1f}x" if ref_tps else ""
        print(f"| {precision} | {max_len} ({max_len - 1}) | {clips} | {'yes' if cache else 'no (recompute)'} | "
              f"{seconds:.2f} | {tps:.1f} | {peak:.0f} | {f'{ref_tps:.1f}' if ref_tps else ''} | {speed} |")
    if not args.tiny:
        print("\n" + top_p_table(max(args.batch_clips) * args.return_sequences))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
