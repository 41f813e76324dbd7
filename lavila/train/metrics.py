"""What a training run reports: ``metrics.jsonl``, TensorBoard / W&B, the console (tqdm bar and log lines), plots.

Named ``metrics`` rather than ``logging`` so that it never shadows the standard library module.

Reading a CUDA tensor on the host (``.item()``, ``float()``, ``.tolist()``) makes the CPU wait until the GPU has
run everything queued before it. The loop therefore keeps each step's losses as device tensors in
:class:`PendingSteps` and reads all of them in one transfer at log steps only, as nanoGPT and torchtitan do;
``metrics.jsonl`` still gets one line per optimiser step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lavila.train.config import TrainConfig


class PendingSteps:
    """Per-step records whose tensor values (losses, gradient norm, ...) stay on the device until :meth:`read`."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def read(self) -> list[dict[str, Any]]:
        """Every pending record with its tensors as Python floats (one device->host copy per device), then empty."""
        records, self.records = self.records, []
        return materialize(records)


def materialize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `records` with every tensor value replaced by a float (its mean); one transfer per device."""
    by_device: dict[torch.device, list[tuple[int, str, torch.Tensor]]] = {}
    for i, record in enumerate(records):
        for key, value in record.items():
            if isinstance(value, torch.Tensor):
                by_device.setdefault(value.device, []).append((i, key, value))
    out = [dict(r) for r in records]
    for entries in by_device.values():
        values = torch.stack([v.detach().float().mean() for _, _, v in entries]).tolist()
        for (i, key, _), value in zip(entries, values, strict=True):
            out[i][key] = value
    return out


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) plus optional TensorBoard / W&B, on rank 0 only."""

    def __init__(self, cfg: TrainConfig, output_dir: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run in a used folder starts a fresh log
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tb"))
            except ImportError:
                print("tensorboard requested but not installed (pip install tensorboard); skipping it")
        if cfg.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project=cfg.wandb_project, config=cfg.to_dict(), dir=str(output_dir),
                                        resume="allow")
            except ImportError:
                print("wandb requested but not installed (pip install wandb); skipping it")

    def _truncate_after(self, step: int) -> None:
        """Drop lines written after the checkpoint we resume from, so no step is logged twice."""
        from lavila.atomic import atomic_write_text

        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line torn by the crash
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        scalars = {f"{record.get('kind', 'train')}/{k}": v for k, v in record.items()
                   if isinstance(v, int | float) and k not in ("step",)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# ---------------------------------------------------------------------------------------------------------------
# Console: a progress bar per epoch (rank 0, ``progress``; lavila.progress) and one line every ``print_freq`` steps
# ---------------------------------------------------------------------------------------------------------------


class Console:
    """The bar advances every step (host-side only); its postfix and the log lines change at log steps."""

    def __init__(self, cfg: TrainConfig, main: bool, total_steps: int) -> None:
        self.cfg, self.main, self.total_steps = cfg, main, total_steps
        self.bar: Any = None

    def start_epoch(self, epoch: int, iters_per_epoch: int, initial: int) -> None:
        if not (self.main and self.cfg.progress):
            return
        from lavila.progress import progress  # tqdm on a terminal, a plain line every 30 s in a log

        self.bar = progress(total=iters_per_epoch, initial=initial, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                            unit="step", dynamic_ncols=True, leave=False)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, record: dict[str, Any]) -> None:
        """A materialised train record: bar postfix, and a line when its step is a multiple of ``print_freq``."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", clips_s=f"{record['clips_per_s']:.1f}",
                                 lr=f"{record['lr']:.2e}", refresh=False)
        step = record["step"]
        if self.main and step % self.cfg.print_freq == 0:
            shown = {k: v for k, v in record.items()
                     if k not in ("kind", "step", "epoch", "eta_s") and isinstance(v, float)}
            line = f"step {step}/{self.total_steps} (epoch {record['epoch']:.2f}) " + " ".join(
                f"{k} {v:.4g}" for k, v in shown.items()) + f" eta {record['eta_s'] / 60:.1f} min"
            self.print(line)

    def print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        elif self.main:
            print(line, flush=True)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    out = []
    with open(path) as fh:
        for line in fh:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def plot_curves(metrics_path: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Loss per step (left) and evaluation metrics per step (right), written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train_rows = [r for r in rows if r.get("kind") == "train"]
    eval_rows = [r for r in rows if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 2 if eval_rows else 1, figsize=(11 if eval_rows else 6, 4), squeeze=False)
    ax = axes[0, 0]
    steps = [r["step"] for r in train_rows]
    ax.plot(steps, [r["loss"] for r in train_rows], lw=0.8, alpha=0.5, label="loss")
    if len(train_rows) >= 10:
        w = max(len(train_rows) // 30, 5)
        smooth = [sum(r["loss"] for r in train_rows[max(0, i - w + 1):i + 1]) / len(train_rows[max(0, i - w + 1):i + 1])
                  for i in range(len(train_rows))]
        ax.plot(steps, smooth, lw=1.5, label=f"loss (mean of {w})")
    val_rows = [r for r in rows if r.get("kind") == "val" and "val_loss" in r]
    if val_rows:
        ax.plot([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows], "o-", label="val loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.legend()
    if eval_rows:
        ax = axes[0, 1]
        keys = [k for k in eval_rows[-1] if "R@" in k] or [k for k in eval_rows[-1] if k == "score"]
        for k in keys:
            ax.plot([r["step"] for r in eval_rows], [r.get(k, math.nan) for r in eval_rows], "o-", label=k)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("%")
        ax.set_title("evaluation")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
