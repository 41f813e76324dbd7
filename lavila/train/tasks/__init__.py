"""Tasks: what differs between trainings, so that one loop (``lavila.train.loop``) runs them all.

A task turns a :class:`~lavila.config.TrainConfig` into a model, a criterion and datasets, and maps one batch to a
dict of losses. The loop owns everything else: devices, DDP/ZeRO/FSDP, AMP, accumulation, clipping, the learning-rate
schedule, checkpoints, resume, signals, logging. The protocol, in calling order:

===========================================  ====================================================================
``Options``  (class attribute)               dataclass of the task's own config keys (``lavila.config.option``)
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

Tasks are found by name in :data:`TASKS` (``"module:Class"`` strings, imported lazily), or given directly as
``task: my.module:MyTask`` in a config file. The dual-encoder (CLIP-style) pre-training task lives here.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from lavila.config import NoOptions, TrainConfig
from lavila.train.optim import build_optimizer, reference_param_groups

# name -> "module:Class". Other packages add their tasks here (or use `task: module:Class` in a config).
TASKS: dict[str, str] = {
    "dual_encoder": "lavila.train.tasks.dual_encoder:DualEncoderTask",
    "narrator": "lavila.train.tasks.narrator:NarratorTask",
    "finetune_retrieval": "lavila.train.tasks.finetune:RetrievalFinetuneTask",
    "finetune_classification": "lavila.train.tasks.finetune:ClassificationFinetuneTask",
}


def get_task_class(name: str) -> type[Task]:
    """Resolve a task name (or ``module:Class``) to its class without building anything."""
    target = TASKS.get(name, name if ":" in name else None)
    if target is None:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} (or give module:Class)")
    module_name, cls_name = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise KeyError(f"task {name!r}: cannot import {module_name} ({err})") from err
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise KeyError(f"task {name!r}: {module_name} has no {cls_name}")
    return cls


def register_task(name: str, target: str | type[Task]) -> None:
    """Register a task under `name` (a ``module:Class`` string or the class itself)."""
    TASKS[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def make_task(cfg: TrainConfig) -> Task:
    return get_task_class(cfg.task or "dual_encoder")(cfg)


class Task:
    """Base class with the defaults of the protocol above; subclasses implement the four ``build_*``/loss methods."""

    Options: ClassVar[type] = NoOptions
    epoch: int = 0  # finished epochs, set by the loop before each evaluate()

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.opts = cfg.task_cfg if cfg.task_cfg is not None else self.Options()

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
