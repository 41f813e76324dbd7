"""Tasks: what differs between trainings, so that one loop (``lavila.train.loop``) runs them all.

A task turns a :class:`~lavila.config.TrainConfig` into a model, a criterion and datasets, and maps one batch to a
dict of losses. The loop owns everything else: devices, DDP/ZeRO/FSDP, AMP, accumulation, clipping, the learning-rate
schedule, checkpoints, resume, signals, logging. The protocol, in calling order:

===========================================  ====================================================================
``Config``  (class attribute)                the task's config: a subclass of ``TrainConfig`` with its own keys
``build_model() -> nn.Module``               on CPU; the loop moves, wraps and (re)loads it
``build_criterion() -> nn.Module``           may own parameters (they are optimised, never decayed)
``build_train_dataset() -> Dataset``         map-style; items are whatever ``collate`` understands
``build_val_dataset() -> Dataset | None``    for the validation loss every ``eval_freq`` epochs
``collate(items) -> batch``                  default ``torch.utils.data.default_collate``
``param_groups(model, criterion)``           default: the reference's decay / no-decay split
``build_optimizer(groups, use_zero)``        default: AdamW (ZeRO-sharded with ``use_zero``)
``compute_loss(model, criterion, batch)``    batch already on the device; returns ``{"loss": ..., metrics}``
``after_optimizer_step(model, criterion)``   e.g. clamp ``logit_scale`` (model unwrapped)
``evaluate(model, device) -> dict | None``   benchmark metrics per epoch; the key ``"score"`` selects the best;
                                             ``self.epoch`` = finished epochs (set by the loop, resume-proof)
``load_weights(model, state_dict, strict)``  how ``--resume``/``--init-from`` weights map onto the model
``fsdp_units(model) -> list[nn.Module]``     blocks to shard with FSDP2 (default: every ModuleList element)
===========================================  ====================================================================

Tasks are found by name in :data:`TASKS` (name -> class, or a zero-argument function returning the class so that
a task's imports are paid only when it is used), or given directly as ``task: my.module:MyTask`` in a config file.
A task's keys are its ``Config`` class: ``lavila train`` picks the task first (``task:``/``--task``, else the model's
kind), then that class parses the recipe and the flags.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from lavila.train.config import TrainConfig
from lavila.train.optim import build_optimizer, reference_param_groups


def _dual_encoder() -> type[Task]:
    from lavila.train.tasks.dual_encoder import DualEncoderTask

    return DualEncoderTask


def _narrator() -> type[Task]:
    from lavila.train.tasks.narrator import NarratorTask

    return NarratorTask


def _finetune_retrieval() -> type[Task]:
    from lavila.train.tasks.finetune import RetrievalFinetuneTask

    return RetrievalFinetuneTask


def _finetune_classification() -> type[Task]:
    from lavila.train.tasks.finetune import ClassificationFinetuneTask

    return ClassificationFinetuneTask


# name -> task class (or a function returning it, imported on first use). Other packages add theirs with
# register_task, or name them as `task: module:Class` in a config.
TASKS: dict[str, type[Task] | Callable[[], type[Task]]] = {
    "dual_encoder": _dual_encoder,
    "narrator": _narrator,
    "finetune_retrieval": _finetune_retrieval,
    "finetune_classification": _finetune_classification,
}


def get_task_class(name: str) -> type[Task]:
    """Resolve a task name (or ``module:Class``) to its class without building anything."""
    entry = TASKS.get(name)
    if entry is not None:
        return entry if isinstance(entry, type) else entry()
    if ":" not in name:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} (or give module:Class)")
    module_name, cls_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise KeyError(f"task {name!r}: cannot import {module_name} ({err})") from err
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise KeyError(f"task {name!r}: {module_name} has no task class {cls_name}")
    return cls


def register_task(name: str, target: type[Task] | Callable[[], type[Task]]) -> None:
    """Register a task class (or a function returning it) under `name`."""
    TASKS[name] = target


def make_task(cfg: TrainConfig) -> Task:
    return get_task_class(cfg.task or "dual_encoder")(cfg)


class Task:
    """Base class with the defaults of the protocol above; subclasses implement the four ``build_*``/loss methods."""

    Config: ClassVar[type[TrainConfig]] = TrainConfig
    epoch: int = 0  # finished epochs, set by the loop before each evaluate()

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.opts = cfg  # the task's own keys are fields of its Config subclass (kept as `opts` for readability)

    # --- required ---------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_criterion(self) -> nn.Module:
        raise NotImplementedError

    def build_train_dataset(self) -> Dataset:
        raise NotImplementedError

    def compute_loss(self, model: nn.Module, criterion: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # --- optional ---------------------------------------------------------------------------------------------
    def build_val_dataset(self) -> Dataset | None:
        return None

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    def param_groups(self, model: nn.Module, criterion: nn.Module) -> list[dict]:
        return reference_param_groups(model, criterion, self.cfg.wd)

    def build_optimizer(self, param_groups: list[dict], use_zero: bool = False) -> torch.optim.Optimizer:
        c = self.cfg
        return build_optimizer(param_groups, c.lr, c.betas, c.eps, c.wd, use_zero=use_zero)

    def after_optimizer_step(self, model: nn.Module, criterion: nn.Module) -> None:
        pass

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float] | None:
        return None

    def load_weights(self, model: nn.Module, state_dict: dict[str, Any], strict: bool) -> list[str]:
        """Load (reference or own) weights; returns missing keys. Strips ``module.``, adapts frame count."""
        from lavila.models.checkpoint import load_state_dict_into

        return load_state_dict_into(model, state_dict, strict=strict)

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        return [m for module_list in model.modules() if isinstance(module_list, nn.ModuleList) for m in module_list]

    def batch_size_of(self, batch: Any) -> int:
        if isinstance(batch, dict):
            batch = next(iter(batch.values()))
        if isinstance(batch, list | tuple):
            batch = batch[0]
        return int(batch.shape[0]) if isinstance(batch, torch.Tensor) else len(batch)
