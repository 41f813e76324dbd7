"""The one training loop: dual-encoder pre-training, narrator training and fine-tuning are tasks it runs.

Read it top to bottom: :func:`train` sets up the process group, the task's model/criterion/data, the optimiser and
the schedule, restores state, then runs ``epochs x iters_per_epoch`` optimiser steps of ``update_freq``
micro-batches each, and writes checkpoints. Mechanics follow the reference trainer (spec 8.1); the differences
are all about not losing work and measuring honestly:

* a checkpoint can be taken at any optimiser step (SIGTERM/SIGUSR1/SIGUSR2, ``stop_after_steps``, a non-finite
  loss) and resumes *exactly*: data position, RNG states, schedule step (see ``lavila.train.state``);
* files are written atomically; ``metrics.jsonl`` gets one JSON line per optimiser step and per evaluation;
* a non-finite loss saves the last good state and stops with a clear error instead of ``sys.exit(1)``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader

from lavila import dist
from lavila.train.config import TrainConfig
from lavila.train.optim import LRSchedule, clip_gradients, optimizer_state_for_checkpoint, set_lr
from lavila.train.state import (
    LAST,
    ResumableDistributedSampler,
    SeededDataset,
    add_module_prefix,
    capture_rng_state,
    load_checkpoint_file,
    restore_rng_state,
    seed_everything,
    seeded_rngs,
    write_checkpoint,
)
from lavila.train.tasks import Task, make_task

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good state was saved before raising."""


class TrainingInterrupted(RuntimeError):
    """A stop signal arrived; state was saved at the step boundary (``signum`` is the signal, 0 for a step limit)."""

    def __init__(self, message: str, signum: int = 0) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainResult:
    global_step: int
    epochs_done: int
    interrupted: bool = False
    best_score: float = 0.0
    checkpoint: Path | None = None
    last_eval: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Small helpers the loop uses
# ---------------------------------------------------------------------------------------------------------------


def resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if cfg.device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(cfg.device)


def amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on?, dtype): mixed precision on CUDA unless disabled; fp32 on CPU."""
    if device.type != "cuda" or cfg.disable_amp:
        return False, torch.float32
    if cfg.amp_dtype == "fp16" or (cfg.amp_dtype == "auto" and not torch.cuda.is_bf16_supported()):
        return True, torch.float16
    return True, torch.bfloat16


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class StopSignals:
    """SIGTERM/SIGUSR1/SIGUSR2 only set a flag; the loop checkpoints at the next step boundary.

    The previous handlers are kept: after saving, a Python handler installed by submitit (checkpoint + requeue)
    is called with the signal, so pre-emption requeues the job that then auto-resumes from ``checkpoint.pt``.
    """

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, n))

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def forward(self, signum: int) -> None:
        """Give the signal to whoever handled it before us (submitit requeues here and exits)."""
        handler = self.previous.get(signum)
        if callable(handler):
            handler(signum, None)


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


def _all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Agree on flags over ranks (any rank's stop/non-finite stops everyone at the same step)."""
    if dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return t.tolist()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint state
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    epoch: int = 0  # current epoch index (== finished epochs at an epoch boundary)
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    global_step: int = 0
    best_score: float = 0.0


def model_state_dict(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict()


def gather_rng_states() -> list[dict[str, Any]]:
    states: list[Any] = [None] * dist.get_world_size()
    if dist.get_world_size() == 1:
        return [capture_rng_state()]
    torch_dist.all_gather_object(states, capture_rng_state())
    return states


def save_state(path_dir: Path, *, cfg: TrainConfig, model: nn.Module, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: Any, progress: Progress, iters_per_epoch: int,
               epoch_done: bool, is_best: bool, fsdp: bool, last_eval: dict | None) -> Path | None:
    """Collective: every rank calls it (ZeRO/FSDP consolidation, RNG gather); rank 0 writes the files."""
    sd = model_state_dict(model, fsdp)
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opt_state = get_optimizer_state_dict(model, optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        opt_state = optimizer_state_for_checkpoint(optimizer)
    rng = gather_rng_states()
    path = None
    if dist.is_main_process():
        bare = unwrap(model)
        model_config = getattr(bare, "config", None)
        if model_config is not None:
            from lavila.models.config import config_to_dict

            model_config = config_to_dict(model_config)
        state = {
            # reference keys
            "epoch": progress.epoch,
            "state_dict": add_module_prefix(sd),
            "criterion": criterion.state_dict(),
            "optimizer": opt_state,
            "scaler": scaler.state_dict(),
            "best_acc1": progress.best_score,
            "args": cfg.to_namespace(),
            # ours
            "lavila_format": CHECKPOINT_FORMAT,
            "optimizer_layout": "fsdp_fqn" if fsdp else "index",
            "config": cfg.to_dict(),
            "model_config": model_config,
            "step_in_epoch": progress.step_in_epoch,
            "global_step": progress.global_step,
            "iters_per_epoch": iters_per_epoch,
            "batch_size": cfg.batch_size,
            "update_freq": cfg.update_freq,
            "world_size": dist.get_world_size(),
            "rng": rng,
            "last_eval": last_eval,
        }
        numbered = progress.epoch if epoch_done and progress.epoch % cfg.save_freq == 0 else None
        written = write_checkpoint(state, path_dir, is_best=is_best, numbered_epoch=numbered)
        path = written[0]
    dist.barrier()
    return path


def restore_state(ckpt: dict[str, Any], *, auto: bool, cfg: TrainConfig, task: Task, model: nn.Module,
                  criterion: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, iters_per_epoch: int,
                  fsdp: bool) -> Progress:
    """Auto-resume (our own checkpoint.pt): everything, strictly. ``--resume``: reference semantics (lenient)."""
    own = ckpt.get("lavila_format") is not None
    progress = Progress(epoch=int(ckpt.get("epoch", 0)), best_score=float(ckpt.get("best_acc1", 0.0)))
    if "criterion" in ckpt and ckpt["criterion"]:
        criterion.load_state_dict(ckpt["criterion"], strict=auto)
    if "optimizer" in ckpt and ckpt["optimizer"] is not None:
        _load_optimizer(ckpt, optimizer, model, fsdp, own)
    if "scaler" in ckpt and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    if own:
        progress.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
        progress.global_step = int(ckpt.get("global_step", progress.epoch * iters_per_epoch))
        same_layout = (ckpt.get("iters_per_epoch") == iters_per_epoch and ckpt.get("world_size") ==
                       dist.get_world_size() and ckpt.get("batch_size") == cfg.batch_size)
        if progress.step_in_epoch and not same_layout:
            print(f"warning: resuming mid-epoch with another world size/batch size/update_freq than the checkpoint "
                  f"({ckpt.get('world_size')}x{ckpt.get('batch_size')}); the data position is approximated")
            consumed = progress.step_in_epoch * ckpt.get("update_freq", 1) * ckpt.get("batch_size", 1) * \
                ckpt.get("world_size", 1)
            progress.step_in_epoch = min(consumed // (cfg.update_freq * cfg.batch_size * dist.get_world_size()),
                                         iters_per_epoch)
            progress.global_step = progress.epoch * iters_per_epoch + progress.step_in_epoch
        rng = ckpt.get("rng") or []
        if len(rng) == dist.get_world_size():
            restore_rng_state(rng[dist.get_rank()])
    else:
        progress.global_step = progress.epoch * iters_per_epoch
    return progress


def _load_optimizer(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module, fsdp: bool,
                    own: bool) -> None:
    state = ckpt["optimizer"]
    if fsdp:
        if ckpt.get("optimizer_layout") != "fsdp_fqn":
            print("warning: optimizer state was not saved by an FSDP run; starting the optimizer fresh")
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    if ckpt.get("optimizer_layout", "index") != "index":
        print("warning: optimizer state was saved by an FSDP run; starting the optimizer fresh")
        return
    # A foreign checkpoint's parameter order may differ from ours: only load when every shape matches.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = state.get("state", {})
    mismatched = [i for i, p in enumerate(params) if i in saved and "exp_avg" in saved[i]
                  and tuple(saved[i]["exp_avg"].shape) != tuple(p.shape)]
    n_saved = sum(len(g["params"]) for g in state.get("param_groups", []))
    if mismatched or n_saved != len(params):
        msg = f"optimizer state does not match this model ({n_saved} saved vs {len(params)} parameters, " \
              f"{len(mismatched)} shape mismatches)"
        if own:
            raise RuntimeError(msg)
        print(f"warning: {msg}; starting the optimizer fresh")
        return
    optimizer.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Run `cfg` to the end (or to a stop request); returns what happened. Raises NonFiniteLossError,
    TrainingInterrupted (after saving) on a stop signal."""
    # --- processes and devices --------------------------------------------------------------------------------
    backend = None if cfg.dist_backend == "auto" else cfg.dist_backend
    if backend is None and cfg.device == "cpu":
        backend = "gloo"  # CPU tensors on a CUDA machine cannot use NCCL
    init_method = None if cfg.dist_url == "env://" else cfg.dist_url
    owns_process_group = not dist.is_dist_ready()
    info = dist.init_distributed(backend=backend, init_method=init_method)
    try:
        return _train(cfg, info, on_step)
    finally:
        if owns_process_group:
            dist.cleanup()


def _train(cfg: TrainConfig, info: dist.DistInfo,
           on_step: Callable[[int, dict[str, float]], None] | None) -> TrainResult:
    rank, world = dist.get_rank(), dist.get_world_size()
    main = rank == 0
    device = resolve_device(cfg, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(cfg.seed + rank)  # the reference seeds seed + rank
    output_dir = Path(cfg.output_dir)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        from lavila.atomic import remove_stale_temps  # temporaries of saves a kill interrupted (GBs each)

        remove_stale_temps(output_dir, ("checkpoint*.pt", "metrics.jsonl", "*.png", "*.json"))
        (output_dir / "config.yaml").write_text(cfg.to_yaml())

    # --- model, criterion (same initial weights on every rank and in single-process runs) --------------------
    task = make_task(cfg)
    with seeded_rngs(cfg.seed):
        model = task.build_model()
        criterion = task.build_criterion()
    auto_path = output_dir / LAST
    resume_path = auto_path if auto_path.is_file() else (Path(cfg.resume) if cfg.resume else None)
    ckpt = load_checkpoint_file(resume_path, trusted=cfg.trust_checkpoint) if resume_path else None
    auto = ckpt is not None and resume_path == auto_path
    if ckpt is not None:
        missing = task.load_weights(model, ckpt["state_dict"], strict=auto)
        print(f"=> {'auto-resuming' if auto else 'resuming'} from {resume_path} (epoch {ckpt.get('epoch', 0)}, "
              f"step {ckpt.get('step_in_epoch', 0)} in epoch){f'; missing keys: {len(missing)}' if missing else ''}")
    elif cfg.init_from:
        init = load_checkpoint_file(cfg.init_from, trusted=cfg.trust_checkpoint)
        missing = task.load_weights(model, init["state_dict"], strict=False)
        print(f"=> initialised from {cfg.init_from} ({len(missing)} model keys not in it)")
    model.to(device)
    criterion.to(device)
    bare_model = model

    fsdp = cfg.use_fsdp and world > 1
    unsharded: list[nn.Parameter] = []
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        # FSDP2 cannot shard 0-d parameters (logit_scale, gates): they stay replicated, their gradients are averaged
        # by hand in _optimizer_step.
        unsharded = [p for p in model.parameters() if p.ndim == 0]
        ignored = set(unsharded) or None
        for unit in task.fsdp_units(model):
            fully_shard(unit, ignored_params=ignored)
        fully_shard(model, ignored_params=ignored)
    elif world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=200,
            find_unused_parameters=cfg.find_unused_parameters)

    # --- optimiser, precision -----------------------------------------------------------------------------
    optimizer = task.build_optimizer(task.param_groups(bare_model, criterion), use_zero=cfg.use_zero and world > 1)
    use_amp, amp_dtype = amp_settings(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)

    # --- data ---------------------------------------------------------------------------------------------
    train_set = SeededDataset(task.build_train_dataset(), cfg.seed)
    sampler = ResumableDistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=task.collate, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=cfg.workers > 0,
                        # own generator: creating an iterator must not consume the global RNG (exact resume)
                        generator=torch.Generator().manual_seed(cfg.seed))
    iters_per_epoch = sampler.num_samples // cfg.batch_size // cfg.update_freq
    if iters_per_epoch == 0:
        raise ValueError(f"the training set ({len(train_set)} items) is smaller than one step "
                         f"(batch_size {cfg.batch_size} x update_freq {cfg.update_freq} x {world} ranks)")
    schedule = LRSchedule.from_config(cfg, iters_per_epoch)
    total_steps = cfg.epochs * iters_per_epoch

    # --- resume -------------------------------------------------------------------------------------------
    progress = Progress(epoch=cfg.start_epoch, global_step=cfg.start_epoch * iters_per_epoch)
    if ckpt is not None:
        progress = restore_state(ckpt, auto=auto, cfg=cfg, task=task, model=model, criterion=criterion,
                                 optimizer=optimizer, scaler=scaler, iters_per_epoch=iters_per_epoch, fsdp=fsdp)
        del ckpt
    log = MetricsLog(cfg, output_dir, enabled=main, resume_step=progress.global_step if auto else None)
    result = TrainResult(global_step=progress.global_step, epochs_done=progress.epoch,
                         best_score=progress.best_score)
    if main:
        n_params = sum(p.numel() for p in bare_model.parameters())
        n_train = sum(p.numel() for p in bare_model.parameters() if p.requires_grad)
        print(f"{cfg.model} ({cfg.task}): {n_params / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trainable); "
              f"{world} process(es) on {device}; global batch {cfg.batch_size * world * cfg.update_freq}; "
              f"{iters_per_epoch} steps/epoch x {cfg.epochs} epochs; AMP {amp_dtype if use_amp else 'off'}")

    def evaluate(kind: str) -> dict[str, float] | None:
        if fsdp:
            model.unshard()  # the root's own parameters; blocks unshard in their forward hooks
        task.epoch = progress.epoch
        metrics = task.evaluate(bare_model, device)
        if fsdp:
            model.reshard()
        if metrics is not None:
            log.write({"kind": kind, "step": progress.global_step, "epoch": progress.epoch, **metrics})
            result.history.append({"step": progress.global_step, **metrics})
            result.last_eval = metrics
            if main:
                shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
                print(f"[eval @ step {progress.global_step}] {shown}")
        return metrics

    def save(epoch_done: bool, is_best: bool = False) -> Path | None:
        path = save_state(output_dir, cfg=cfg, model=model, criterion=criterion, optimizer=optimizer,
                          scaler=scaler, progress=progress, iters_per_epoch=iters_per_epoch, epoch_done=epoch_done,
                          is_best=is_best, fsdp=fsdp, last_eval=result.last_eval)
        result.checkpoint = output_dir / LAST
        return path

    if cfg.eval_at_start and progress.global_step == 0:
        evaluate("eval")

    # --- training -----------------------------------------------------------------------------------------
    ema_step_time: float | None = None
    with StopSignals() as stop, contextlib.ExitStack() as cleanup:
        cleanup.callback(log.close)
        while progress.epoch < cfg.epochs:
            epoch = progress.epoch
            start_index = progress.step_in_epoch * cfg.update_freq * cfg.batch_size
            sampler.set_epoch(epoch, start_index=start_index)
            model.train()
            criterion.train()
            batches = iter(loader)
            bar = _progress_bar(cfg, main, epoch, iters_per_epoch, progress.step_in_epoch)
            while progress.step_in_epoch < iters_per_epoch:
                t_start = time.perf_counter()
                losses, data_time, nonfinite = _one_step(cfg, task, model, criterion, optimizer, scaler,
                                                         batches, device, use_amp, amp_dtype, fsdp)
                flags = _all_reduce_max([float(nonfinite), float(stop.signum)], device)
                if flags[0]:
                    optimizer.zero_grad(set_to_none=True)
                    path = save(epoch_done=False)
                    raise NonFiniteLossError(
                        f"non-finite loss at epoch {epoch}, step {progress.step_in_epoch} (global step "
                        f"{progress.global_step}): {({k: v for k, v in losses.items()})}. The state before this "
                        f"step is saved in {path or output_dir / LAST}; lower --lr, set --clip-grad-value, or use "
                        "--disable-amp / --amp-dtype bf16, then resume.")
                lr = schedule(progress.global_step)
                set_lr(optimizer, lr)
                for p in unsharded:
                    if p.grad is not None:
                        torch_dist.all_reduce(p.grad)
                        p.grad /= world
                grad_norm = _optimizer_step(cfg, optimizer, scaler, bare_model, criterion, model, use_amp)
                task.after_optimizer_step(bare_model, criterion)
                progress.global_step += 1
                progress.step_in_epoch += 1
                step_time = time.perf_counter() - t_start
                ema_step_time = step_time if ema_step_time is None else 0.9 * ema_step_time + 0.1 * step_time
                record = {"kind": "train", "step": progress.global_step, "epoch": epoch + progress.step_in_epoch /
                          iters_per_epoch, "lr": lr, **losses, "step_time": step_time, "data_time": data_time,
                          "clips_per_s": cfg.batch_size * cfg.update_freq * world / step_time,
                          "eta_s": (total_steps - progress.global_step) * ema_step_time}
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                scale = getattr(bare_model, "logit_scale", None)
                if isinstance(scale, torch.Tensor):
                    record["logit_scale"] = float(scale.detach().float().exp())
                if scaler.is_enabled():
                    record["amp_scale"] = float(scaler.get_scale())
                if device.type == "cuda":
                    record["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                log.write(record)
                if on_step is not None:
                    on_step(progress.global_step, record)
                _update_bar(bar, record, cfg, main, progress.global_step, total_steps)

                if cfg.eval_in_middle_freq > 0 and progress.global_step % cfg.eval_in_middle_freq == 0 \
                        and progress.step_in_epoch < iters_per_epoch:
                    evaluate("eval")
                limit = cfg.stop_after_steps is not None and progress.global_step >= cfg.stop_after_steps
                if flags[1] or limit:
                    if bar is not None:
                        bar.close()
                    done = progress.step_in_epoch == iters_per_epoch
                    if done:  # the step limit fell on an epoch boundary: finish the epoch properly
                        progress.epoch, progress.step_in_epoch = epoch + 1, 0
                    save(epoch_done=done)
                    result.global_step, result.epochs_done = progress.global_step, progress.epoch
                    result.interrupted = True
                    signum = int(flags[1])
                    if signum:
                        print(f"stop signal {signal.Signals(signum).name}: saved {output_dir / LAST} at global step "
                              f"{progress.global_step}")
                        stop.forward(signum)  # submitit: checkpoint() + requeue + exit on rank 0
                        raise TrainingInterrupted(f"stopped by signal {signum} at step {progress.global_step}",
                                                  signum)
                    print(f"stopped after {progress.global_step} steps (stop_after_steps); resume with the same "
                          f"command")
                    return result
            if bar is not None:
                bar.close()

            # --- end of epoch: validation, evaluation, checkpoint ---------------------------------------------
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            if progress.epoch % cfg.eval_freq == 0:
                _validate(cfg, task, model, criterion, device, use_amp, amp_dtype, log, progress, world, rank)
            metrics = evaluate("eval")
            is_best = metrics is not None and "score" in metrics and metrics["score"] > progress.best_score
            if is_best:
                progress.best_score = metrics["score"]
            save(epoch_done=True, is_best=is_best)
            result.epochs_done = progress.epoch

    result.global_step, result.best_score = progress.global_step, progress.best_score
    if main and cfg.plot:
        try:
            plot_curves(output_dir / "metrics.jsonl", output_dir / "training_curves.png")
        except Exception as err:  # noqa: BLE001 - a plot must never fail a finished run
            print(f"could not plot the curves: {err}")
    return result


def _one_step(cfg: TrainConfig, task: Task, model: nn.Module, criterion: nn.Module, optimizer: Any, scaler: Any,
              batches: Iterator, device: torch.device, use_amp: bool, amp_dtype: torch.dtype,
              fsdp: bool) -> tuple[dict[str, float], float, bool]:
    """Forward/backward `update_freq` micro-batches (gradients synchronised on the last one only)."""
    totals: dict[str, float] = {}
    data_time, nonfinite = 0.0, False
    for micro in range(cfg.update_freq):
        t0 = time.perf_counter()
        batch = to_device(next(batches), device)
        data_time += time.perf_counter() - t0
        last = micro == cfg.update_freq - 1
        if fsdp:
            model.set_requires_gradient_sync(last)
            sync = contextlib.nullcontext()
        elif isinstance(model, nn.parallel.DistributedDataParallel) and not last:
            sync = model.no_sync()
        else:
            sync = contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                out = task.compute_loss(model, criterion, batch)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                nonfinite = True
            scaler.scale(loss / cfg.update_freq).backward()
        for k, v in out.items():
            value = float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
            totals[k] = totals.get(k, 0.0) + value / cfg.update_freq
    return totals, data_time, nonfinite


def _optimizer_step(cfg: TrainConfig, optimizer: Any, scaler: Any, bare_model: nn.Module, criterion: nn.Module,
                    model: nn.Module, use_amp: bool) -> float | None:
    grad_norm = None
    if cfg.clip_grad_value is not None:
        scaler.unscale_(optimizer)
        params = list(model.parameters()) + list(criterion.parameters())
        norm = clip_gradients(params, cfg.clip_grad_type, cfg.clip_grad_value)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm) if norm is not None else None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@torch.no_grad()
def _validate(cfg: TrainConfig, task: Task, model: nn.Module, criterion: nn.Module, device: torch.device,
              use_amp: bool, amp_dtype: torch.dtype, log: MetricsLog, progress: Progress, world: int,
              rank: int) -> dict[str, float] | None:
    """Loss on the validation set (every rank evaluates its shard; means are all-reduced)."""
    val = task.build_val_dataset()
    if val is None:
        return None
    sampler = ResumableDistributedSampler(SeededDataset(val, cfg.seed), num_replicas=world, rank=rank,
                                          shuffle=False)
    loader = DataLoader(SeededDataset(val, cfg.seed), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, collate_fn=task.collate, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for batch in loader:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            out = task.compute_loss(model, criterion, batch)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach().float().mean())
        n += 1
    model.train()
    if n == 0:
        return None
    metrics = {f"val_{k}": float(dist.all_reduce_mean(torch.tensor(v / n, device=device))) for k, v in sums.items()}
    log.write({"kind": "val", "step": progress.global_step, "epoch": progress.epoch, **metrics})
    if rank == 0:
        print(f"[val @ epoch {progress.epoch}] " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# Progress bar and plots
# ---------------------------------------------------------------------------------------------------------------


def _progress_bar(cfg: TrainConfig, main: bool, epoch: int, total: int, initial: int) -> Any:
    if not (main and cfg.progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                dynamic_ncols=True, leave=False)


def _update_bar(bar: Any, record: dict[str, Any], cfg: TrainConfig, main: bool, step: int, total: int) -> None:
    if bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.4f}", clips_s=f"{record['clips_per_s']:.1f}",
                        lr=f"{record['lr']:.2e}", refresh=False)
        bar.update(1)
    if main and step % cfg.print_freq == 0:
        eta_s = record["eta_s"]
        shown = {k: v for k, v in record.items()
                 if k not in ("kind", "step", "epoch", "eta_s") and isinstance(v, float)}
        line = f"step {step}/{total} (epoch {record['epoch']:.2f}) " + " ".join(
            f"{k} {v:.4g}" for k, v in shown.items()) + f" eta {eta_s / 60:.1f} min"
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)


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
