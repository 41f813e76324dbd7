"""The one training loop: dual-encoder pre-training, narrator training and fine-tuning are tasks it runs.

Read :class:`Trainer` top to bottom: ``__init__`` sets up the task's model/criterion/data, DDP/ZeRO/FSDP, the
optimiser, AMP and the schedule, and restores state; :meth:`Trainer.fit` runs epochs of optimiser steps
(:meth:`Trainer.train_step`: ``update_freq`` micro-batches, clip, step, schedule), logs, evaluates and saves.
Mechanics follow the reference trainer (spec 8.1); the differences are about not losing work, measuring honestly
and keeping the GPU busy:

* a checkpoint can be taken at any optimiser step (SIGTERM/SIGUSR1/SIGUSR2, ``stop_after_steps``, a non-finite
  loss) and resumes *exactly*: data position, RNG states, schedule step (``lavila.train.state.Checkpointer``);
* losses stay on the device: the host reads them (one transfer for all steps since the previous log) only at log
  steps (every ``print_freq`` steps, the last step of an epoch, before an evaluation, at a stop), so the CPU runs
  ahead of the GPU in between. ``metrics.jsonl`` still gets one line per optimiser step (``lavila.train.metrics``);
* a non-finite loss is caught at the next log step, *before* that step's update: if it is that step's, the state
  before it is saved; if it happened at an earlier step, the weights are already spoilt and ``checkpoint.pt`` (the
  last save, always older than the bad step) is left alone. Either way training stops with a clear error
  (``print_freq 1`` checks every step at the price of one host sync per step).
"""

from __future__ import annotations

import contextlib
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
from lavila.errors import JobInterrupted
from lavila.failpoints import failpoint
from lavila.locks import output_lock
from lavila.models.checkpoint import read_checkpoint
from lavila.train.config import TrainConfig
from lavila.train.metrics import Console, MetricsLog, PendingSteps, materialize, plot_curves
from lavila.train.optim import LRSchedule, clip_gradients, set_lr
from lavila.train.state import (
    LAST,
    Checkpointer,
    Progress,
    ResumableDistributedSampler,
    SeededDataset,
    repair_snapshots,
    seed_everything,
    seeded_rngs,
)
from lavila.train.tasks import make_task

OnStep = Callable[[int, dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; ``checkpoint.pt`` holds the last good state saved before it."""


class TrainingInterrupted(JobInterrupted):
    """A stop signal arrived; state was saved at the step boundary (``signum`` is the signal, 0 for a step limit)."""


@dataclass
class TrainResult:
    global_step: int
    epochs_done: int
    interrupted: bool = False
    best_score: float = 0.0
    checkpoint: Path | None = None
    last_eval: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def train(cfg: TrainConfig, *, on_step: OnStep | None = None) -> TrainResult:
    """Run `cfg` to the end (or to a stop request); returns what happened.

    Raises :class:`NonFiniteLossError`, and :class:`TrainingInterrupted` (after saving) on a stop signal.
    ``on_step(global_step, record)`` is called after every optimiser step; `record` has the host-side values (step,
    epoch, lr, data time) at every step and the losses and other device values at log steps only.
    """
    backend = None if cfg.dist_backend == "auto" else cfg.dist_backend
    if backend is None and cfg.device == "cpu":
        backend = "gloo"  # CPU tensors on a CUDA machine cannot use NCCL
    init_method = None if cfg.dist_url == "env://" else cfg.dist_url
    owns_process_group = not dist.is_dist_ready()
    info = dist.init_distributed(backend=backend, init_method=init_method)
    try:
        # One job per output folder (lavila.locks): a second run there would resume this one's checkpoint and
        # overwrite its files. The main rank holds the lock; the others write nothing there.
        with output_lock(cfg.output_dir, "lavila train") if dist.is_main_process() else contextlib.nullcontext():
            return Trainer(cfg, local_rank=info.local_rank, on_step=on_step).fit()
    finally:
        if owns_process_group:
            dist.cleanup()


class Trainer:
    """One training run of a task. Build it inside a process group (or none); :meth:`fit` runs it."""

    def __init__(self, cfg: TrainConfig, *, local_rank: int = 0, on_step: OnStep | None = None) -> None:
        self.cfg, self.on_step = cfg, on_step
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.main = self.rank == 0
        self.device = dist.resolve_device(cfg.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.use_amp, self.amp_dtype = amp_settings(cfg, self.device)  # refuses fp16 off CUDA before any work
        seed_everything(cfg.seed + self.rank)  # the reference seeds seed + rank
        self.output_dir = Path(cfg.output_dir)
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            from lavila.atomic import remove_stale_temps  # temporaries of saves a kill interrupted (GBs each)

            remove_stale_temps(self.output_dir, ("checkpoint*.pt", "metrics.jsonl", "*.png", "*.json"))
            (self.output_dir / "config.yaml").write_text(cfg.to_yaml())

        self.task = make_task(cfg)
        ckpt, auto = self._build_model_and_load_weights()
        self._wrap_model()
        self.optimizer = self.task.build_optimizer(self.task.param_groups(self.bare_model, self.criterion),
                                                   use_zero=cfg.use_zero and self.world > 1)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp and self.amp_dtype == torch.float16)
        self._build_data()
        self.schedule = LRSchedule.from_config(cfg, self.iters_per_epoch)
        self.total_steps = cfg.epochs * self.iters_per_epoch

        self.checkpointer = Checkpointer(cfg, self.output_dir, model=self.model, criterion=self.criterion,
                                         optimizer=self.optimizer, scaler=self.scaler, fsdp=self.fsdp,
                                         iters_per_epoch=self.iters_per_epoch)
        self.progress = Progress(epoch=cfg.start_epoch, global_step=cfg.start_epoch * self.iters_per_epoch)
        if ckpt is not None:
            self.progress = self.checkpointer.restore(ckpt, auto=auto)
            if auto and self.main:  # snapshots an interrupted save of an older version never wrote
                repair_snapshots(self.output_dir, ckpt, cfg.save_freq)
            del ckpt
        self.last_saved_step = self.progress.global_step if auto else None
        self.log = MetricsLog(cfg, self.output_dir, enabled=self.main,
                              resume_step=self.progress.global_step if auto else None)
        self.console = Console(cfg, self.main, self.total_steps)
        self.pending = PendingSteps()
        self.result = TrainResult(global_step=self.progress.global_step, epochs_done=self.progress.epoch,
                                  best_score=self.progress.best_score)
        # Stop flags are agreed on every step over a CPU (gloo) group: no device sync, and every rank stops at the
        # same step. The default group already is one unless the backend is NCCL.
        self.cpu_group = None
        if self.world > 1 and torch_dist.get_backend() != "gloo":
            self.cpu_group = torch_dist.new_group(backend="gloo")
        self.signals = StopSignals(announce=self.main)
        self.stop_signum = 0
        self.log_this_step = False
        self.clock = time.perf_counter()  # start of the steps not yet logged
        self.ema_step_time: float | None = None
        self._describe()

    # --- setup ----------------------------------------------------------------------------------------------
    def _build_model_and_load_weights(self) -> tuple[dict[str, Any] | None, bool]:
        """Same initial weights on every rank and in single-process runs; then resume or init-from weights."""
        cfg, task = self.cfg, self.task
        with seeded_rngs(cfg.seed):
            self.model = self.bare_model = task.build_model()
            self.criterion = task.build_criterion()
        auto_path = self.output_dir / LAST
        resume_path = auto_path if auto_path.is_file() else (Path(cfg.resume) if cfg.resume else None)
        ckpt = read_checkpoint(resume_path, trust=cfg.trust_checkpoint) if resume_path else None
        auto = ckpt is not None and resume_path == auto_path
        if ckpt is not None:
            missing = task.load_weights(self.model, ckpt["state_dict"], strict=auto)
            print(f"=> {'auto-resuming' if auto else 'resuming'} from {resume_path} (epoch {ckpt.get('epoch', 0)}, "
                  f"step {ckpt.get('step_in_epoch', 0)} in epoch)"
                  f"{f'; missing keys: {len(missing)}' if missing else ''}")
        elif cfg.init_from:
            init = read_checkpoint(cfg.init_from, trust=cfg.trust_checkpoint)
            missing = task.load_weights(self.model, init["state_dict"], strict=False)
            print(f"=> initialised from {cfg.init_from} ({len(missing)} model keys not in it)")
        self.model.to(self.device)
        self.criterion.to(self.device)
        return ckpt, auto

    def _wrap_model(self) -> None:
        """DDP, or FSDP2 (``fully_shard`` per task unit, then the root) with ``use_fsdp``; nothing in one process."""
        self.fsdp = self.cfg.use_fsdp and self.world > 1
        self.replicated: list[nn.Parameter] = []  # FSDP2 cannot shard 0-d parameters (logit_scale, gates)
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            self.replicated = [p for p in self.model.parameters() if p.ndim == 0]
            ignored = set(self.replicated) or None
            for unit in self.task.fsdp_units(self.model):
                fully_shard(unit, ignored_params=ignored)
            fully_shard(self.model, ignored_params=ignored)
        elif self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                bucket_cap_mb=200, find_unused_parameters=self.cfg.find_unused_parameters)

    def _build_data(self) -> None:
        cfg = self.cfg
        train_set = SeededDataset(self.task.build_train_dataset(), cfg.seed)
        self.sampler = ResumableDistributedSampler(train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                                   seed=cfg.seed)
        self.loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.workers,
                                 collate_fn=self.task.collate, pin_memory=self.device.type == "cuda", drop_last=True,
                                 persistent_workers=cfg.workers > 0, worker_init_fn=ignore_sigint,
                                 # own generator: creating an iterator must not consume the global RNG (exact resume)
                                 generator=torch.Generator().manual_seed(cfg.seed))
        if cfg.steps_per_epoch:
            self.sampler.set_num_samples(cfg.steps_per_epoch * cfg.update_freq * cfg.batch_size)
        self.iters_per_epoch = self.sampler.num_samples // cfg.batch_size // cfg.update_freq
        if self.iters_per_epoch == 0:
            raise ValueError(f"the training set ({len(train_set)} items) is smaller than one step (batch_size "
                             f"{cfg.batch_size} x update_freq {cfg.update_freq} x {self.world} ranks)")

    def _describe(self) -> None:
        if not self.main:
            return
        cfg, bare = self.cfg, self.bare_model
        n_params = sum(p.numel() for p in bare.parameters())
        n_train = sum(p.numel() for p in bare.parameters() if p.requires_grad)
        print(f"{cfg.model} ({cfg.task}): {n_params / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trainable); "
              f"{self.world} process(es) on {self.device}; global batch {cfg.batch_size * self.world * cfg.update_freq}"
              f"; {self.iters_per_epoch} steps/epoch x {cfg.epochs} epochs; "
              f"precision {str(self.amp_dtype).removeprefix('torch.') if self.use_amp else 'fp32'}")

    # --- the run ----------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, p = self.cfg, self.progress
        if cfg.eval_at_start and p.global_step == 0:
            self.evaluate()
        with self.signals, contextlib.closing(self.log):
            while p.epoch < cfg.epochs:
                batches = self.start_epoch()
                while p.step_in_epoch < self.iters_per_epoch:
                    record = self.train_step(batches)
                    if self.log_this_step:
                        record = self.write_logs()
                    if self.on_step is not None:
                        self.on_step(p.global_step, record)
                    if self.eval_due(p.global_step, p.step_in_epoch):
                        self.evaluate()
                    failpoint("train.step_done", str(p.global_step))  # a test hook: kill/hold at a known step
                    if self.stop_signum or self.step_limit_reached():
                        return self.stop()
                self.end_epoch()
        self.result.global_step, self.result.best_score = p.global_step, p.best_score
        if self.main and cfg.plot:
            try:
                plot_curves(self.output_dir / "metrics.jsonl", self.output_dir / "training_curves.png")
            except Exception as err:  # noqa: BLE001 - a plot must never fail a finished run
                print(f"could not plot the curves: {err}")
        return self.result

    def start_epoch(self) -> Iterator:
        p, cfg = self.progress, self.cfg
        self.sampler.set_epoch(p.epoch, start_index=p.step_in_epoch * cfg.update_freq * cfg.batch_size)
        self.model.train()
        self.criterion.train()
        batches = iter(self.loader)
        self.console.start_epoch(p.epoch, self.iters_per_epoch, p.step_in_epoch)
        self.clock = time.perf_counter()
        return batches

    def train_step(self, batches: Iterator) -> dict[str, Any]:
        """One optimiser step over ``update_freq`` micro-batches; returns its record (tensors still on the device)."""
        cfg, p = self.cfg, self.progress
        losses: dict[str, torch.Tensor] = {}
        data_time = 0.0
        for micro in range(cfg.update_freq):
            t0 = time.perf_counter()
            batch = to_device(next(batches), self.device)
            data_time += time.perf_counter() - t0
            with self.grad_sync(last=micro == cfg.update_freq - 1):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                    out = self.task.compute_loss(self.model, self.criterion, batch)
                self.scaler.scale(out["loss"] / cfg.update_freq).backward()
            for k, v in out.items():
                losses[k] = losses.get(k, 0.0) + detached_mean(v) / cfg.update_freq
        self.stop_signum = self.agree_on_stop()
        self.log_this_step = self.is_log_step()
        if self.log_this_step:
            self.check_finite(losses)  # before the update, so that a bad step never reaches the weights
        lr = self.schedule(p.global_step)
        set_lr(self.optimizer, lr)
        for param in self.replicated:  # FSDP's unsharded 0-d parameters: average their gradients by hand
            if param.grad is not None:
                torch_dist.all_reduce(param.grad)
                param.grad /= self.world
        grad_norm = self.clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_optimizer_step(self.bare_model, self.criterion)
        p.global_step += 1
        p.step_in_epoch += 1
        self.console.step()
        return self.record_step(lr, losses, grad_norm, data_time)

    def end_epoch(self) -> None:
        """Validation loss (every ``eval_freq`` epochs), the task's evaluation, and a checkpoint."""
        cfg, p = self.cfg, self.progress
        self.console.end_epoch()
        p.epoch, p.step_in_epoch = p.epoch + 1, 0
        if p.epoch % cfg.eval_freq == 0:
            self.validate()
        metrics = self.evaluate()
        is_best = metrics is not None and "score" in metrics and metrics["score"] > p.best_score
        if is_best:
            p.best_score = metrics["score"]
        self.save(epoch_done=True, is_best=is_best)
        self.result.epochs_done = p.epoch
        from lavila.data.robust import check_epoch_end  # decode-failure summary (printed, logged); aborts if over

        check_epoch_end(self.loader.dataset, epoch=p.epoch, step=p.global_step, log_record=self.log.write,
                        main=self.main)

    def stop(self) -> TrainResult:
        """Save at this step boundary; a signal is then handed on (submitit requeues) and raised.

        A stop after an epoch's last step saves that position as it is (``step_in_epoch == iters_per_epoch``), not
        as a finished epoch: the resumed run then does the epoch's end (validation, evaluation, best and numbered
        snapshots, decode-failure check) exactly as an uninterrupted run would have.
        """
        p = self.progress
        self.console.end_epoch()
        self.save(epoch_done=False)
        self.result.global_step, self.result.epochs_done = p.global_step, p.epoch
        self.result.interrupted = True
        signum = self.stop_signum
        if signum:
            if self.main:  # said before forwarding: submitit's handler requeues and exits without returning
                print(f"stop signal {signal.Signals(signum).name}: saved {self.output_dir / LAST} at global step "
                      f"{p.global_step}", flush=True)
            self.signals.forward(signum)  # submitit: checkpoint() + requeue + exit on rank 0
            raise TrainingInterrupted(f"interrupted by {signal.Signals(signum).name} at step {p.global_step}; "
                                      f"checkpoint saved to {self.output_dir / LAST}; rerun the same command to "
                                      "resume", signum)
        print(f"stopped after {p.global_step} steps (stop_after_steps); resume with the same command")
        return self.result

    # --- pieces of a step -------------------------------------------------------------------------------------
    def grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradients are all-reduced on the last micro-batch of a step only."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(last)
        elif isinstance(self.model, nn.parallel.DistributedDataParallel) and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def clip_gradients(self) -> torch.Tensor | None:
        """Unscale and clip (``clip_grad_value``); returns the total norm for ``norm`` clipping, on the device."""
        if self.cfg.clip_grad_value is None:
            return None
        self.scaler.unscale_(self.optimizer)
        params = list(self.model.parameters()) + list(self.criterion.parameters())
        norm = clip_gradients(params, self.cfg.clip_grad_type, self.cfg.clip_grad_value)
        if norm is not None and hasattr(norm, "full_tensor"):  # FSDP: a DTensor (collective, not a host sync)
            norm = norm.full_tensor()
        return norm

    def record_step(self, lr: float, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor | None,
                    data_time: float) -> dict[str, Any]:
        p = self.progress
        record: dict[str, Any] = {"kind": "train", "step": p.global_step,
                                  "epoch": p.epoch + p.step_in_epoch / self.iters_per_epoch, "lr": lr, **losses,
                                  "data_time": data_time}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        scale = getattr(self.bare_model, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            record["logit_scale"] = scale.detach().float().exp()
        if self.scaler.is_enabled():
            record["amp_scale"] = self.scaler._get_scale_async().detach().clone()  # updated in place later
        if self.device.type == "cuda":
            record["peak_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20  # host-side counter
        self.pending.add(record)
        return {k: v for k, v in record.items() if not isinstance(v, torch.Tensor)}

    # --- stopping, logging --------------------------------------------------------------------------------------
    def agree_on_stop(self) -> int:
        """The stop signal of any rank (max over ranks), exchanged on the CPU: every rank stops at the same step."""
        signum = self.signals.signum
        if self.world == 1:
            return signum
        flag = torch.tensor([signum], dtype=torch.int64)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=self.cpu_group)
        return int(flag[0])

    def step_limit_reached(self) -> bool:
        return self.cfg.stop_after_steps is not None and self.progress.global_step >= self.cfg.stop_after_steps

    def eval_due(self, step: int, step_in_epoch: int) -> bool:
        """An in-epoch evaluation after optimiser step `step` (``eval_in_middle_freq``; epoch ends evaluate anyway)."""
        freq = self.cfg.eval_in_middle_freq
        return freq > 0 and step % freq == 0 and step_in_epoch < self.iters_per_epoch

    def is_log_step(self) -> bool:
        """Whether the step being run (before its update) is read on the host: see the module docstring."""
        p, cfg = self.progress, self.cfg
        step, step_in_epoch = p.global_step + 1, p.step_in_epoch + 1
        return (step % cfg.print_freq == 0 or step_in_epoch == self.iters_per_epoch or bool(self.stop_signum)
                or (cfg.stop_after_steps is not None and step >= cfg.stop_after_steps)
                or self.eval_due(step, step_in_epoch))

    def check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Raise on a non-finite loss of this step or of any step since the last log (agreed over ranks)."""
        steps = [r["loss"] for r in self.pending.records] + [losses["loss"]]
        bad = (~torch.isfinite(torch.stack([s.float() for s in steps]))).float()
        flags = all_reduce_max(bad).tolist()  # the one host sync of a log step before its update
        if not any(flags):
            return
        first = flags.index(1.0)
        p, n = self.progress, len(self.pending)
        epoch, step_in_epoch, global_step = p.epoch, p.step_in_epoch - n + first, p.global_step - n + first
        good = materialize(self.pending.records[:first])
        bad_losses = materialize([self.pending.records[first] if first < n else losses])[0]
        shown = {k: bad_losses[k] for k in losses if k in bad_losses}
        self.pending.records = []
        for record in good:
            self.log.write(record)
        where = f"non-finite loss at epoch {epoch}, step {step_in_epoch} (global step {global_step}): {shown}."
        advice = "lower --lr, set --clip-grad-value, or use --precision fp32 / bf16, then resume"
        if first == n:  # this step: its update has not been applied, the state before it is good
            self.optimizer.zero_grad(set_to_none=True)
            path = self.save(epoch_done=False)
            raise NonFiniteLossError(f"{where} The state before this step is saved in {path or self.output_dir / LAST}"
                                     f"; {advice}.")
        saved = (f"{self.output_dir / LAST} (global step {self.last_saved_step}) is the last good state"
                 if self.last_saved_step is not None else "no checkpoint was saved before it")
        raise NonFiniteLossError(f"{where} It was found at the next log step (print_freq {self.cfg.print_freq}), "
                                 f"after its update, so nothing was saved: {saved}; {advice} (and --print-freq 1 to "
                                 "check every step).")

    def write_logs(self) -> dict[str, Any]:
        """Read the pending steps on the host (one transfer), write their lines, update the console."""
        records = self.pending.read()
        now = time.perf_counter()
        step_time = (now - self.clock) / len(records)  # the steps were not synchronised one by one: their mean
        self.clock = now
        decay = 0.9 ** len(records)
        self.ema_step_time = step_time if self.ema_step_time is None else \
            decay * self.ema_step_time + (1 - decay) * step_time
        clips = self.cfg.batch_size * self.cfg.update_freq * self.world
        for record in records:
            record.update(step_time=step_time, clips_per_s=clips / step_time,
                          eta_s=(self.total_steps - record["step"]) * self.ema_step_time)
            self.log.write(record)
        self.console.show(records[-1])
        return records[-1]

    # --- evaluation and checkpoints -----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float] | None:
        """The task's benchmark evaluation (rank 0 prints; every rank gets the metrics)."""
        p = self.progress
        if self.fsdp:
            self.model.unshard()  # the root's own parameters; blocks unshard in their forward hooks
        self.task.epoch = p.epoch
        metrics = self.task.evaluate(self.bare_model, self.device)
        if self.fsdp:
            self.model.reshard()
        if metrics is not None:
            self.log.write({"kind": "eval", "step": p.global_step, "epoch": p.epoch, **metrics})
            self.result.history.append({"step": p.global_step, **metrics})
            self.result.last_eval = metrics
            if self.main:
                self.console.print(f"[eval @ step {p.global_step}] " +
                                   ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        self.clock = time.perf_counter()
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Loss on the validation set (every rank evaluates its shard; means are all-reduced)."""
        cfg, p = self.cfg, self.progress
        val = self.task.build_val_dataset()
        if val is None:
            return None
        data = SeededDataset(val, cfg.seed)
        sampler = ResumableDistributedSampler(data, num_replicas=self.world, rank=self.rank, shuffle=False)
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            collate_fn=self.task.collate, drop_last=True, worker_init_fn=ignore_sigint,
                            generator=torch.Generator().manual_seed(cfg.seed))
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for batch in loader:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                out = self.task.compute_loss(self.model, self.criterion, to_device(batch, self.device))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + detached_mean(v)
            n += 1
        self.model.train()
        if n == 0:
            return None
        metrics = {f"val_{k}": float(dist.all_reduce_mean(v / n)) for k, v in sums.items()}
        self.log.write({"kind": "val", "step": p.global_step, "epoch": p.epoch, **metrics})
        if self.main:
            print(f"[val @ epoch {p.epoch}] " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        self.clock = time.perf_counter()
        return metrics

    def save(self, epoch_done: bool, is_best: bool = False) -> Path | None:
        path = self.checkpointer.save(self.progress, epoch_done=epoch_done, is_best=is_best,
                                      last_eval=self.result.last_eval)
        self.result.checkpoint = self.output_dir / LAST
        self.last_saved_step = self.progress.global_step
        self.clock = time.perf_counter()
        return path


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------


def amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on?, dtype) for ``cfg.precision`` on ``device`` (the rule of :func:`lavila.dist.effective_precision`).

    bf16 autocasts on CPU as on CUDA (only the forward/loss sit under autocast: the tasks cast outputs to fp32
    before the loss, weights and AdamW state stay fp32). fp16 is refused off CUDA: it needs loss scaling, and
    CPUs have no fast fp16 matmuls.
    """
    precision = dist.runnable_precision(device, cfg.requested_precision(), "training")  # fp16 off CUDA: refused
    if precision == "fp32":
        return False, torch.float32
    return True, dist.AUTOCAST_DTYPES[precision]


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def detached_mean(value: Any) -> torch.Tensor:
    """A loss/metric output as a float32 scalar tensor, cut from the graph, where it is (no host sync)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().mean()
    return torch.tensor(float(value))


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks (flags: any rank's non-finite loss stops everyone at the same step)."""
    if dist.get_world_size() > 1:
        t = t.clone()
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return t


class StopSignals:
    """SIGINT/SIGTERM/SIGUSR1/SIGUSR2 only set a flag; the loop checkpoints at the next step boundary.

    Ctrl-C is a stop request like SIGTERM (it used to raise ``KeyboardInterrupt`` and lose up to an epoch): the
    first one says so on stderr and the run saves at the end of the step; a second one raises
    ``KeyboardInterrupt`` at once (``lavila train: interrupted``), saving nothing more, for a run stuck in a long
    evaluation or data stall. Forked DataLoader workers inherit the handler and ignore the signal
    (:func:`ignore_sigint`): the main process decides.

    The previous handlers are kept: after saving, a Python handler installed by submitit (checkpoint + requeue)
    is called with the signal, so pre-emption requeues the job that then auto-resumes from ``checkpoint.pt``.
    """

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, n))

    def __init__(self, announce: bool = True) -> None:
        self.signum = 0
        self.announce = announce
        self.previous: dict[int, Any] = {}
        self.pid = 0

    def __enter__(self) -> StopSignals:
        self.pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked worker that inherited the handler: the main process decides
            return
        if signum == signal.SIGINT:
            if self.signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: abort now
            if self.announce:  # os.write: print() from a handler can hit a half-written buffer (reentrant call)
                os.write(2, b"\nCtrl-C: saving a checkpoint at the end of this step (press Ctrl-C again to abort "
                            b"without saving)\n")
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def forward(self, signum: int) -> None:
        """Give the signal to whoever handled it before us (submitit requeues here and exits).

        Not SIGINT: Python's own handler would raise ``KeyboardInterrupt`` over the saved, orderly stop.
        """
        handler = self.previous.get(signum)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signum, None)


def ignore_sigint(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group; only the main process acts on it
    (a worker that took it as ``KeyboardInterrupt`` would exit, and the next batch would fail the run)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
