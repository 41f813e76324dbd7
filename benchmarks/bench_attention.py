"""Per-call cost of TSF-B's three attention shapes on each kernel: what ``cpu_attention_impl`` is decided from.

    python benchmarks/bench_attention.py --threads 2

For each of the space attention (8 groups x 12 heads x 196 queries x 197 keys at batch 2, 4 frames), the time
attention (392 x 12 x 4 x 5) and the CLS query (2 x 12 x 1 x 785), in fp32 and bf16, the forward + backward and the
forward alone without autograd, through ``lavila.models.timesformer.attention`` with ``impl`` explicit ("math") or
SDPA, and which one ``auto`` picks for that call. Median of ``--repeats`` calls after 3 warm-ups.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavila.models.timesformer import attention, cpu_attention_impl  # noqa: E402

SHAPES = {"space": (8, 196, 197), "time": (392, 4, 5), "CLS": (2, 1, 785)}  # groups, queries, keys


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def time_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str, grad: bool, repeats: int) -> float:
    """Median ms of one attention call: forward + backward with ``grad``, else the forward without autograd."""
    if grad:
        return median_ms(lambda: attention(q, k, v, impl).float().sum().backward(), repeats)
    with torch.no_grad():
        return median_ms(lambda: attention(q, k, v, impl), repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"attention per call, {args.heads} heads x {args.head_dim} dims, {args.threads} threads, torch "
          f"{torch.__version__}, median of {args.repeats} calls after 3 warm-ups\n")
    print("| call | dtype | pass | explicit ms | SDPA ms | faster | `auto` picks |")
    print("|---|---|---|---|---|---|---|")
    for name, (groups, nq, nk) in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            for label, grad in (("fwd + bwd", True), ("fwd, no grad", False)):
                q, k, v = (torch.randn(groups, args.heads, n, args.head_dim, generator=g).to(dtype).requires_grad_(grad)
                           for n in (nq, nk, nk))
                ms = {impl: time_call(q, k, v, impl, grad, args.repeats) for impl in ("math", "sdpa")}
                with torch.set_grad_enabled(grad):
                    picked = cpu_attention_impl(q, k)
                faster = "explicit" if ms["math"] < ms["sdpa"] else "SDPA"
                print(f"| {name} ({groups} x {nq} x {nk}) | {str(dtype).removeprefix('torch.')} | {label} "
                      f"| {ms['math']:.2f} | {ms['sdpa']:.2f} | {faster} | "
                      f"{'explicit' if picked == 'math' else 'SDPA'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
