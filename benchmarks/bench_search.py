"""Search latency over a large index on CPU: is plain torch enough, or does `lavila search` need FAISS?

A synthetic index of ``--segments`` L2-normalised ``--dim``-d float32 embeddings (default 100 000 x 256, a ViT-B
dual encoder's embedding size; a 100 000-segment index is ~55 hours of video in 2 s windows) and random queries.
Rows, each over the same queries:

* ``lavila search``: :func:`lavila.eval.search.search`, what ``lavila search`` and ``lavila app`` run per query
  (float32 matrix-vector product, ``torch.topk``, float64 re-scoring of the candidates, the hit dicts);
* ``top_k only``: :func:`lavila.eval.search.top_k` without building hits;
* ``float64 + argsort``: what ``lavila search`` did before (a float64 copy of the matrix and a full stable sort;
  20 queries);
* ``python loop``: a naive pure-Python dot product per row and a sort (``--naive-queries`` queries only: seconds
  each).

Latency is wall time per query (p50 / p95 over the queries, after one warm-up); peak memory is the rise of the
process's peak RSS (VmHWM, reset before each row via ``/proc/self/clear_refs``) above the resident index. The index
load time is ``lavila.eval.search.load_index`` of the folder (safetensors + Parquet) written once to a temporary
directory. Results of every row are checked against a float64 reference.

    python benchmarks/bench_search.py                                 # 100k x 256, 200 queries, top 10
    python benchmarks/bench_search.py --segments 1000000 --queries 50  # 1M segments (1 GB of embeddings)
    python benchmarks/bench_search.py --threads 1                      # one core
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed(fn, queries: np.ndarray) -> tuple[list[float], float | None, list]:
    fn(queries[0])  # warm-up (allocator, thread pool)
    can_reset = reset_peak()
    rss0 = _status_kb("VmRSS")
    times, outs = [], []
    for q in queries:
        t0 = time.perf_counter()
        outs.append(fn(q))
        times.append(time.perf_counter() - t0)
    peak = _status_kb("VmHWM")
    extra = (peak - rss0) / 1024 if can_reset and peak is not None and rss0 is not None else None
    return times, extra, outs


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--naive-queries", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from lavila.eval import library
    from lavila.eval.search import load_index, search, top_k

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    emb = torch.nn.functional.normalize(torch.randn(args.segments, args.dim, generator=gen), dim=1)
    queries = torch.randn(args.queries, args.dim, generator=gen).numpy()
    per_video = 1000
    windows = [{"video": f"videos/v{i // per_video:05d}.mp4", "start": 2.0 * (i % per_video),
                "end": 2.0 * (i % per_video) + 2.0} for i in range(args.segments)]
    videos = [{"video": f"videos/v{v:05d}.mp4", "size": 1, "mtime_ns": 1, "status": "indexed", "error": None,
               "windows": per_video, "failed_windows": 0} for v in range((args.segments + per_video - 1) // per_video)]

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "bench.index")
        t0 = time.perf_counter()
        library.write_library(folder, {"embeddings": emb, "windows": windows, "videos": videos,
                                       "protocol": {"frames": 4}})
        write_s = time.perf_counter() - t0
        size_mb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1e6
        t0 = time.perf_counter()
        index = load_index(folder)
        load_s = time.perf_counter() - t0
    del windows, emb

    e32 = index["embeddings"]
    e64_ref = e32.double().numpy()

    def reference(q: np.ndarray) -> list[int]:
        s = e64_ref @ (q / np.linalg.norm(q))
        return np.argsort(-s, kind="stable")[: args.top_k].tolist()

    def old_search(q: np.ndarray) -> list[int]:  # the previous implementation, per query
        e = index["embeddings"].double().numpy()
        s = e @ (q / np.linalg.norm(q))
        return np.argsort(-s, kind="stable")[: args.top_k].tolist()

    rows_py = e32.tolist() if args.naive_queries else []

    def naive(q: np.ndarray) -> list[int]:
        qn = (q / np.linalg.norm(q)).tolist()
        scores = [sum(a * b for a, b in zip(row, qn)) for row in rows_py]
        return sorted(range(len(scores)), key=lambda i: -scores[i])[: args.top_k]

    methods = [
        ("lavila search", lambda q: [h["segment"] for h in search(index, q, args.top_k)], queries),
        ("top_k only", lambda q: top_k(e32, q, args.top_k)[0].tolist(), queries),
        ("float64 + argsort (before)", old_search, queries[:20]),
        ("python loop", naive, queries[: args.naive_queries]),
    ]
    results = []
    for name, fn, qs in methods:
        if not len(qs):
            continue
        times, extra, outs = timed(fn, qs)
        exact = all(o == reference(q) for o, q in zip(outs, qs))
        results.append((name, len(qs), times, extra, exact))

    naive_p50 = next((statistics.median(t) for n, _, t, _, _ in results if n == "python loop"), None)
    print(f"# lavila search benchmark: {args.segments} segments x {args.dim} d (float32 "
          f"{args.segments * args.dim * 4 / 1e6:.0f} MB), top {args.top_k}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"index folder: {size_mb:.1f} MB on disk, written in {write_s:.2f} s, load_index {load_s * 1000:.0f} ms; "
          f"process RSS with the index loaded {(_status_kb('VmRSS') or 0) / 1024:.0f} MB")
    print()
    print("| method | queries | p50 ms | p95 ms | mean ms | peak extra MB | vs python loop (p50) | exact top-k |")
    print("|---|---:|---:|---:|---:|---:|---:|:---:|")
    for name, n, times, extra, exact in results:
        p50 = statistics.median(times)
        speed = f"{naive_p50 / p50:,.0f}x" if naive_p50 else "-"
        print(f"| {name} | {n} | {p50 * 1000:.2f} | {pct(times, 95) * 1000:.2f} | {statistics.mean(times) * 1000:.2f} "
              f"| {'-' if extra is None else f'{extra:.1f}'} | {speed} | {'yes' if exact else 'NO'} |")


if __name__ == "__main__":
    main()
