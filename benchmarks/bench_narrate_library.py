"""Throughput of ``lavila narrate DIR --every 1s``: windows/s of the whole pipeline (decode, batch, narrate, write).

    python benchmarks/bench_narrate_library.py                 # tiny random narrator, CPU
    python benchmarks/bench_narrate_library.py --full          # VCLM_OPENAI_TIMESFORMER_BASE_GPT2, random weights

The library is the shared media clips that decode (nasa 13 s, pancake 10.4 s, kneading 5 s, blender 5 s: 34
windows at one caption per second, about 33 s of video), narrated through :func:`lavila.narrate.library.
run_library` into a temporary folder, the reference's decoding (10 sequences, top-p 0.95, T 0.7) with
``--max-len`` tokens and no early stop. ``--full`` builds the TSF-B + GPT-2 narrator with random weights (gates
opened) and a stand-in tokenizer that prints token ids (the vocabulary does not change the amount of work; no
GPT-2 files are needed). Prints one line: windows, seconds, windows/s, settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEDIA = Path(os.environ.get("LAVILA_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "media"
CLIPS = ["nasa_13013.mp4", "flipping_a_pancake.mkv", "mixkit-hands-of-a-baker-kneading-a-dough-42467-medium.mp4",
         "mixkit-chef-preparing-a-sauce-in-a-blender-43034-medium.mp4"]


class IdsTokenizer:
    """Decodes ids as numbers: enough for a throughput run of a random narrator without GPT-2's files."""

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(map(str, ids))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size TSF-B + GPT-2 narrator (random weights)")
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--num-return-sequences", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing to fetch (and no retries when offline)

    from lavila.narrate import library as lib
    from lavila.narrate import narrate as nar
    from lavila.narrate.generate import GenerationConfig
    from lavila.narrate.tiny import create_tiny_narrator_checkpoint, randomize_gates

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        root.mkdir()
        for name in CLIPS:
            (root / name).symlink_to(MEDIA / name)
        ckpt = create_tiny_narrator_checkpoint(Path(tmp) / "tiny.pt")
        if args.full:
            from lavila.models import create_model

            torch.manual_seed(0)
            model = create_model("VCLM_OPENAI_TIMESFORMER_BASE_GPT2").eval()
            randomize_gates(model)
            model.to(args.device)

            def load(job, device):
                return model, IdsTokenizer()

            nar._load_model = load  # the library imports it from here when it starts
        gen = GenerationConfig(num_return_sequences=args.num_return_sequences, max_len=args.max_len)
        job = nar.NarrateJob(checkpoint=str(ckpt), videos=[str(root)], output_dir=str(Path(tmp) / "out"),
                             every="1s", generation=gen, batch_size=args.batch_size, num_workers=args.num_workers,
                             device=args.device, progress_every=10.0)
        start = time.perf_counter()
        lib.run_library(job)
        wall = time.perf_counter() - start
        windows = sum(len(lib._read_json(p)["windows"]) for p in (Path(tmp) / "out").glob("*.json")
                      if p.name != "captions.json")
    name = "VCLM_OPENAI_TIMESFORMER_BASE_GPT2 (random)" if args.full else "tiny random narrator"
    print(f"{name}: {windows} windows in {wall:.1f} s = {windows / wall:.2f} windows/s end to end ("
          f"{args.num_return_sequences} seqs, max_len {args.max_len}, batch {args.batch_size}, {args.num_workers} "
          f"workers, {args.threads} threads, {args.device}; the 'narrated ... windows/s' line above excludes model "
          "loading)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
