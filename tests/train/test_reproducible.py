"""Same seed, same machine, same weights: two processes train one tiny dual encoder and must agree bit for bit.

The two processes are made as different as a user's two runs are: another heap layout (allocations of odd sizes
before training, so tensors land at other alignments), the tuned allocator of every `lavila` verb, the CLI. The
demo's "same seed, same table" (docs/demo.md) rests on this.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.train.helpers import tiny_values

SCRIPT = r"""
import sys
junk = [bytearray(int(n)) for n in sys.argv[2].split(",") if n]  # shifts the heap layout
from lavila.cli import main
raise SystemExit(main(["train", sys.argv[1]]))
"""


def _train(tmp: Path, name: str, junk: str) -> tuple[str, list[float]]:
    out = tmp / name
    cfg = tiny_values(out, epochs=2, synthetic_train_size=64, batch_size=8, model_overrides={
        "img_size": 32, "patch_size": 8, "vision_width": 64, "vision_layers": 2, "vision_heads": 4,
        "text_width": 64, "text_layers": 2, "text_heads": 4}, project_embed_dim=32, precision="fp32", print_freq=1)
    cfg["output_dir"] = str(out)
    recipe = tmp / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", SCRIPT, str(recipe), junk], check=True, env=env, capture_output=True,
                   timeout=300)
    from lavila.models.checkpoint import read_checkpoint

    state = read_checkpoint(out / "checkpoint.pt")["state_dict"]
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r.get("kind") == "train" and "loss" in r]
    return digest, losses


def test_two_processes_same_seed_give_identical_weights_and_losses(tmp_path) -> None:
    a = _train(tmp_path, "a", "")
    b = _train(tmp_path, "b_with_a_longer_folder_name", "17,4099,70001,333")
    assert len(a[1]) >= 8  # 16 steps, logged
    assert a[1] == b[1]  # every logged loss, exactly
    assert a[0] == b[0]  # every weight, bit for bit


def test_mkl_strict_reproducibility_is_on_unless_the_user_set_it() -> None:
    code = "import lavila, os; print(os.environ['MKL_CBWR'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "AUTO,STRICT"
    env["MKL_CBWR"] = "COMPATIBLE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "COMPATIBLE"
