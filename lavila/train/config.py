"""Training configuration: :class:`TrainConfig` (what every training job shares) and how a recipe becomes one.

A recipe is one flat YAML mapping whose keys are the reference's flag names with ``_`` for ``-``
(``batch_size: 32``, ``metadata_aux: [a.pkl, b.pkl]``). Which dataclass reads it depends on the *task*
(``lavila.train.tasks``): each task owns a subclass of :class:`TrainConfig` with its own keys (the dual encoder's
``norm_embed``/``metadata_aux``, the narrator's ``freeze_lm_vclm``, ...). The task comes from ``task:`` (file or
``--task``), else from the kind of ``model`` (dual encoder or narrator). Command-line flags then override the file
through :func:`lavila.config.parse` (reference spellings, one-line errors naming key and source).

Launching is one explicit rule, the same from the file and from flags: ``launcher: submitit`` (``--launcher
submitit``, or ``--submit``) submits the job to SLURM through submitit with the ``nodes``/``ngpus``/... keys;
anything else runs in this process (under ``torchrun`` for DDP). SLURM keys alone never submit.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from lavila.config import ConfigError, Where, YamlMapping, option, values_of


@dataclass
class TrainConfig:
    """Keys every training task shares; a task's own keys live in its subclass (``Task.Config``)."""

    # --- what to train -------------------------------------------------------------------------------------
    task: str | None = option(None, "task to run (dual_encoder, narrator, finetune_retrieval, "
                                    "finetune_classification, or module:Class); default: from the model's kind")
    model: str = option("CLIP_OPENAI_TIMESFORMER_BASE", "registry model name (`lavila models`)")
    model_overrides: YamlMapping = option(
        default_factory=dict, help="registry overrides for create_model, e.g. {img_size: 32, vision_layers: 2}")
    # --- data ----------------------------------------------------------------------------------------------
    dataset: str = option("ego4d", "training data: ego4d (metadata + video chunks) or synthetic (embedded set)")
    root: str = option("datasets/Ego4D/video_5min_chunks_288px/", "video root folder")
    metadata: str = option("datasets/Ego4D/ego4d_train.pkl", "training metadata (pickle/Parquet)")
    output_dir: str = option("./", "checkpoints, metrics.jsonl and plots go here")
    clip_length: int = option(4, "frames per clip", positive=True)
    clip_stride: int = option(16, "frame stride for dense sampling", positive=True)
    sparse_sample: bool = option(False, "segment-based sparse sampling over the whole window")
    workers: int = option(10, "DataLoader worker processes per rank", min=0, aliases=("-j",))
    # --- schedule / optimiser ------------------------------------------------------------------------------
    epochs: int = option(5, "training epochs", positive=True)
    warmup_epochs: float = option(1, "linear warm-up length in epochs (fractions allowed)", min=0)
    start_epoch: int = option(0, "first epoch (overwritten by resume)", min=0)
    batch_size: int = option(32, "clips per GPU/process per step", positive=True)
    lr: float = option(3e-5, "peak learning rate", positive=True)
    fix_lr: bool = option(False, "constant --lr from step 0 (no warm-up, no cosine)")
    lr_start: float = option(1e-6, "warm-up start learning rate", min=0)
    lr_end: float = option(1e-5, "cosine end learning rate", min=0)
    steps_per_epoch: int = option(
        0, "optimiser steps per epoch (0 = one pass over the training set); N repeats the epoch's permutation as "
        "needed, so models trained on sets of different sizes can take exactly the same number of steps", min=0)
    update_freq: int = option(1, "gradient accumulation: optimiser step every N micro-batches", positive=True)
    wd: float = option(0.01, "AdamW weight decay (decayed group only)", min=0)
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas")
    eps: float = option(1e-8, "AdamW eps", positive=True)
    clip_grad_type: Literal["norm", "value"] = option("norm", "gradient clipping kind")
    clip_grad_value: float | None = option(None, "clip gradients at this norm/value (off when unset)", positive=True)
    # --- precision / memory --------------------------------------------------------------------------------
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "autocast precision on CPU or CUDA: auto = bf16 where the hardware has bf16 units (Ampere+ GPUs, "
        "AMX/AVX512-BF16 CPUs), fp32 elsewhere; fp16 (GradScaler) is CUDA-only. Loss, weights and AdamW state stay "
        "fp32")
    disable_amp: bool = option(False, "legacy spelling of --precision fp32")
    amp_dtype: Literal["auto", "bf16", "fp16"] = option(
        "auto", "legacy spelling of --precision bf16/fp16 (auto = --precision auto)")
    use_checkpoint: bool = option(False, "gradient (activation) checkpointing in the towers")
    use_zero: bool = option(False, "ZeroRedundancyOptimizer: shard AdamW state over ranks")
    use_fsdp: bool = option(False, "FSDP2 (fully_shard) each transformer block and the model")
    find_unused_parameters: bool = option(False, "DDP find_unused_parameters")
    # --- evaluation / checkpoints / logging ----------------------------------------------------------------
    eval_freq: int = option(99, "validation loss every N epochs", positive=True)
    eval_in_middle_freq: int = option(-1, "task evaluation every N optimiser steps (-1 = off)")
    eval_at_start: bool = option(False, "run the task evaluation once before training")
    save_freq: int = option(1, "keep checkpoint_{epoch:04d}.pt every N epochs", positive=True)
    print_freq: int = option(10, "log metrics every N optimiser steps", positive=True)
    progress: bool = option(True, "tqdm progress bar on rank 0")
    plot: bool = option(True, "write training_curves.png at the end")
    wandb: bool = option(False, "log to Weights & Biases (if installed)")
    wandb_project: str = option("LaVid", "W&B project")
    tensorboard: bool = option(False, "write TensorBoard events to output_dir/tb (if installed)")
    # --- resume / init -------------------------------------------------------------------------------------
    resume: str = option("", "checkpoint to resume from (reference semantics; output_dir/checkpoint.pt wins)")
    init_from: str = option("", "load only model weights from this checkpoint (strict=False), e.g. a released one")
    trust_checkpoint: bool = option(False, "allow torch.load(weights_only=False) for checkpoints you trust")
    stop_after_steps: int | None = option(
        None, "save and stop after this many optimiser steps in total (simulates an interruption)", positive=True)
    # --- system / distributed ------------------------------------------------------------------------------
    seed: int = option(0, "random seed (data order, augmentation, init)", min=0)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    dist_url: str = option("env://", "process-group init method")
    dist_backend: Literal["auto", "nccl", "gloo"] = option("auto", "auto (nccl on CUDA, gloo on CPU), nccl or gloo")
    # --- launching (SLURM via submitit) --------------------------------------------------------------------
    launcher: Literal["local", "submitit"] = option(
        "local", "local = run in this process (or under torchrun); submitit = submit to SLURM with the keys below",
        aliases=("--submit=submitit",))
    cluster: Literal["slurm", "local", "debug"] | None = option(
        None, "submitit cluster: slurm, local or debug (default: auto-detect)")
    nodes: int = option(8, "SLURM nodes", positive=True)
    ngpus: int = option(8, "GPUs (= tasks) per node", positive=True)
    timeout: int = option(2880, "SLURM time limit in minutes", positive=True)
    partition: str = option("learnlab", "SLURM partition")
    use_volta32: bool = option(False, "request 32 GB V100s (constraint volta32gb)")
    comment: str = option("", "SLURM comment")
    job_dir: str = option("", "submitit folder and output_dir ('%j' = job id)")
    mem_gb_per_gpu: int = option(40, "host memory per GPU in GB", positive=True)
    cpus_per_task: int = option(10, "CPUs per task", positive=True)
    slurm_signal_delay_s: int = option(120, "seconds between the pre-emption signal and the kill", min=0)
    slurm_max_num_timeout: int = option(30, "how many times a timed-out job is requeued", min=0)

    def validate(self, where: Where) -> None:
        """Rules across keys; a task's subclass extends them (and calls this first)."""
        if self.lr_end > self.lr and not self.fix_lr:
            raise ConfigError(f"{where('lr_end')}: {self.lr_end} is above lr={self.lr}")
        if self.warmup_epochs > self.epochs and not self.fix_lr:
            raise ConfigError(f"{where('warmup_epochs')}: {self.warmup_epochs} exceeds epochs={self.epochs}")
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ConfigError(f"{where('betas')}: each beta must be in [0, 1), got {self.betas}")
        self.requested_precision(where)
        if self.requested_precision() == "fp16" and self.device == "cpu":
            raise ConfigError(f"{where('precision')}: fp16 training needs CUDA (loss scaling, fp16 kernels); on CPU "
                              "use --precision bf16 or fp32")
        if self.use_zero and self.use_fsdp:
            raise ConfigError(f"{where('use_fsdp')}: use either use_zero or use_fsdp, not both")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"{where('device')}: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        from lavila.models.registry import MODEL_CONFIGS

        if self.model not in MODEL_CONFIGS:
            raise ConfigError(f"{where('model')}: unknown model {self.model!r}; `lavila models` lists them")

    def requested_precision(self, where: Where | None = None) -> str:
        """``precision`` with the legacy keys folded in: ``disable_amp: true`` = fp32, ``amp_dtype: bf16|fp16`` = that
        dtype (on CPU as on CUDA), ``amp_dtype: auto`` = no choice. An explicit ``precision`` wins over defaults;
        a legacy key that contradicts it is an error (with ``where``) rather than a silent pick."""
        legacy = "fp32" if self.disable_amp else (self.amp_dtype if self.amp_dtype != "auto" else "auto")
        if self.disable_amp and self.amp_dtype != "auto" and where is not None:
            raise ConfigError(f"{where('amp_dtype')}: amp_dtype {self.amp_dtype} contradicts disable_amp: true; "
                              "use --precision instead of both")
        if self.precision == "auto":
            return legacy
        if legacy not in ("auto", self.precision) and where is not None:
            key = "disable_amp" if self.disable_amp else "amp_dtype"
            raise ConfigError(f"{where(key)}: contradicts precision {self.precision} ({key} is its legacy spelling: "
                              "drop it)")
        return self.precision

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{key: value}`` of every key (what a YAML recipe contains)."""
        return values_of(self)

    def to_namespace(self) -> argparse.Namespace:
        """The reference's ``args`` (a flat Namespace), stored in checkpoints for loaders that read it."""
        return argparse.Namespace(**self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def submit_requested(self) -> bool:
        """True when the job goes to SLURM through submitit (``launcher: submitit``), false to run here."""
        return self.launcher == "submitit"


__all__ = ["TrainConfig"]
