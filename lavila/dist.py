"""Distributed plumbing: who am I (torchrun or SLURM env), process-group setup, and gathers that keep gradients.

Every rank of a LaViLa contrastive run computes the *same* loss on the global batch. That only trains correctly
because the all-gather used for the global batch passes gradients back (see `all_gather_with_grad`); the plain
`torch.distributed.all_gather` cuts them.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import functools
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from lavila.errors import ConfigError

# torch 2.13 deprecates the autograd-aware gather in favour of the newer functional collectives, which older
# supported versions (>= 2.1) lack; it still works, so keep its warning out of every training log.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                        category=FutureWarning)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "none"  # "torchrun", "slurm" or "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError as err:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from err


def world_info_from_env(env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank/world size/local rank as the reference reads them: torchrun's variables first, then SLURM's."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(
            rank=_int_env(env, "RANK"),
            world_size=_int_env(env, "WORLD_SIZE"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            source="torchrun",
        )
    if "SLURM_PROCID" in env:
        rank = _int_env(env, "SLURM_PROCID")
        world_size = _int_env(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else 1
        if "SLURM_LOCALID" in env:
            local_rank = _int_env(env, "SLURM_LOCALID")
        else:
            local_rank = rank % max(torch.cuda.device_count(), 1)
        return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, source="slurm")
    return DistInfo()


def resolve_device(spec: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """The one rule every entry point (training, evaluation, narration, demo, benchmarks) uses to pick a device.

    ``auto`` (or None/empty) -> ``cuda:<local_rank>`` when CUDA is available, else CPU; ``cuda`` ->
    ``cuda:<local_rank>`` (one GPU per process under torchrun/SLURM); anything else is taken as torch spells it
    (``cpu``, ``cuda:1``, ``mps``). ``local_rank`` defaults to the launcher's (LOCAL_RANK / SLURM_LOCALID, 0 in a
    plain process).
    """
    spec = spec or "auto"
    if spec in ("auto", "cuda"):
        if spec == "auto" and not torch.cuda.is_available():
            return torch.device("cpu")
        rank = world_info_from_env().local_rank if local_rank is None else local_rank
        return torch.device("cuda", rank)
    return torch.device(spec)


# --------------------------------------------------------------------------------------------------- precision
# One rule for every entry point (train, eval, index, narrate, benchmarks), next to the device rule it depends on.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic units (x86 AMX-BF16 / AVX-512-BF16, Arm BF16); detected once.

    Why not simply "bf16 everywhere": on a CPU without them (e.g. AVX2 only) PyTorch emulates bf16 matmuls by
    converting to fp32 and back, which is much *slower* than fp32, so ``auto`` must stay fp32 there.
    ``torch.backends.cpu.get_cpu_capability()`` says at best "AVX512", which does not imply bf16 units, so the
    kernel's CPU flags decide. ``LAVILA_CPU_BF16=0/1`` overrides the detection (macOS/Windows have no /proc).
    """
    forced = os.environ.get("LAVILA_CPU_BF16")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes", "on")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return bool(set(value.split()) & {"amx_bf16", "avx512_bf16", "bf16"})
    except OSError:
        pass
    return False


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has native bf16 units: Ampere-or-newer GPUs, CPUs per :func:`cpu_has_bf16`.

    Emulated bf16 (a V100, an AVX2 CPU) counts as unsupported: it is slower than fp32 and buys nothing.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch without the keyword
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def default_precision(device: torch.device) -> str:
    """What ``auto`` means on ``device``: bf16 autocast where the hardware has bf16 units, fp32 elsewhere.

    Never fp16 by default: it needs loss scaling in training and overflows in places (attention logits) that bf16
    does not. Conformance fixtures never go through ``auto``: they always run fp32.
    """
    return "bf16" if bf16_supported(device) else "fp32"


def effective_precision(device: torch.device, precision: str) -> str:
    """The precision a run really uses (``auto`` resolved by :func:`default_precision`; explicit choices kept)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    return default_precision(torch.device(device)) if precision == "auto" else precision


def runnable_precision(device: torch.device, precision: str, what: str) -> str:
    """:func:`effective_precision`, refusing a choice that cannot run on ``device``: every entry point (train, eval,
    index, search, narrate) calls this once, before loading anything, so they refuse alike and early.

    fp16 needs CUDA: CPUs have no fast fp16 matmuls (autocast would run, slowly and without the loss scaling training
    needs), so an explicit ``--precision fp16`` there is a one-line :class:`~lavila.errors.ConfigError` naming
    ``what`` ("this evaluation", "training") rather than a silent fallback. ``auto`` never resolves to fp16.
    """
    device = torch.device(device)
    resolved = effective_precision(device, precision)
    if resolved == "fp16" and device.type != "cuda":
        raise ConfigError(f"--precision fp16 needs CUDA, but {what} runs on {device}: use --precision bf16 or fp32")
    return resolved


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` on ``device`` (CPU or CUDA alike); fp32 is no autocast at all.

    Matmuls, convolutions and attention run in the low precision while weights, LayerNorm/softmax statistics and
    outputs cast back stay fp32, so a model needs no change and fp32 weights are shared with training.
    """
    device = torch.device(device)
    precision = effective_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def init_distributed(
    backend: str | None = None,
    init_method: str | None = None,
    timeout_minutes: float = 30.0,
    env: Mapping[str, str] | None = None,
    silence_non_main: bool = True,
) -> DistInfo:
    """Join the process group described by the environment (no-op for a single process).

    NCCL is chosen when CUDA is available, gloo otherwise (CPU tests, laptops). Under SLURM without torchrun the
    rendezvous still needs MASTER_ADDR/MASTER_PORT or an explicit `init_method` (e.g. a shared `file://` path);
    `submitit.helpers.TorchDistributedEnvironment().export()` sets the former.
    """
    info = world_info_from_env(env)
    if not info.distributed:
        return info
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank, info.source)
    environ = os.environ if env is None else env
    if init_method is None:
        if "MASTER_ADDR" not in environ or "MASTER_PORT" not in environ:
            raise RuntimeError(
                f"{info.source} says world_size={info.world_size} but MASTER_ADDR/MASTER_PORT are not set: launch "
                "with torchrun, export them (submitit.helpers.TorchDistributedEnvironment().export()), or pass "
                "init_method='file:///shared/folder/<unique>_init'"
            )
        init_method = "env://"
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        world_size=info.world_size,
        rank=info.rank,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    barrier()
    if silence_non_main:
        silence_print_unless_main(info.rank == 0)
    return info


def silence_print_unless_main(is_main: bool) -> None:
    """Mute `print` on non-zero ranks (as the reference does); `print(..., force=True)` still prints."""
    builtin_print = builtins.print

    def rank_aware_print(*args, force: bool = False, **kwargs) -> None:
        if is_main or force:
            builtin_print(*args, **kwargs)

    builtins.print = rank_aware_print


def is_dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_ready() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_ready() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_ready() and get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if is_dist_ready():
        dist.destroy_process_group()


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, keeping the graph (identity without a process group).

    ``torch.distributed.nn.functional.all_gather``'s backward sums every rank's gradient for this rank's slice
    (reduce-scatter on NCCL, all-to-all + sum elsewhere). Each rank builds the same global loss, so rank r's slice
    receives W copies of dL/dx_r: the gradient that reaches the local encoder is W * dL/dx_r, and DDP's mean over
    ranks turns W * (1/W) into the exact dL/dtheta (tests/train/test_dist_loss.py checks this with 2 processes).

    All ranks must hold the same shape (the loaders use drop_last). 0-d tensors are gathered as 1-element vectors.
    """
    if tensor.ndim == 0:
        tensor = tensor.unsqueeze(0)
    if get_world_size() == 1:
        return tensor
    return torch.cat(dist_nn.all_gather(tensor), dim=0)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0 without gradient; bool tensors come back as bool.

    gloo cannot all_gather bool, so bools travel as uint8.
    """
    if tensor.ndim == 0:
        tensor = tensor.unsqueeze(0)
    if get_world_size() == 1:
        return tensor
    send = tensor.detach().contiguous()
    send = send.to(torch.uint8) if send.dtype == torch.bool else send
    parts = [torch.empty_like(send) for _ in range(get_world_size())]
    dist.all_gather(parts, send)
    out = torch.cat(parts, dim=0)
    return out.bool() if tensor.dtype == torch.bool else out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of a (metric) tensor over ranks; a copy, the input is left alone."""
    out = tensor.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= get_world_size()
    return out
