"""Batched, sharded, cached forward passes over a benchmark's clips and texts.

One engine serves zero-shot evaluation, fine-tuned evaluation (where the "embedding" is the classifier's logits) and
``lavila index``: items are read by a :class:`~lavila.data.benchmarks.SegmentDataset`, clips whose video cannot be
decoded are reported and counted (their rows are NaN and listed in ``failed``, never zeros), the item list is
sharded over ``torchrun`` ranks and the results all-gathered, and finished work is cached on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from lavila import dist
from lavila.data.benchmarks import collate_views
from lavila.dist import autocast_context
from lavila.eval.cache import EmbeddingCache
from lavila.progress import progress as progress_bar  # tqdm on a terminal, plain periodic lines in a log

EncodeFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EmbedResult:
    embeds: np.ndarray  # float32 [N, *item_shape, E]; NaN for failed items
    failed: dict[int, str] = field(default_factory=dict)
    from_cache: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the items that were embedded."""
        mask = np.ones(self.embeds.shape[0], dtype=bool)
        mask[list(self.failed)] = False
        return mask


# The precision rule (``auto`` = bf16 only where the device has bf16 units, fp32 elsewhere; fp16 refused off CUDA)
# lives in lavila.dist alone, next to the device rule, so train, eval, index and narrate resolve ``--precision``
# identically and a test patches one place (``lavila.dist.cpu_has_bf16``). This engine only applies the autocast.
__all__ = ["EmbedResult", "embed_dataset", "encode_texts", "l2_normalize"]


@torch.no_grad()
def embed_dataset(
    encode: EncodeFn,
    dataset: torch.utils.data.Dataset,
    *,
    device: torch.device,
    batch_size: int = 16,
    num_workers: int = 4,
    precision: str = "auto",
    cache: EmbeddingCache | None = None,
    flush_every: int = 50,
    desc: str = "embedding",
    meta: dict | None = None,
    progress: bool = True,
    allow_all_failed: bool = False,
) -> EmbedResult:
    """Run ``encode`` over every item's views (``frames [.., 3, T, H, W]`` flattened into one batch dimension).

    Returns embeddings shaped ``[N, *leading dims of one item's frames, E]``. With ``torch.distributed`` initialised,
    rank r handles items ``r::W`` and every rank returns the full gathered result. When no item at all can be
    embedded it raises, unless ``allow_all_failed`` (then ``embeds`` is an empty ``[N, 0]`` array and ``failed`` lists
    every item: ``lavila index`` adding one truncated video to an index that holds others).
    """
    start_time = time.time()
    if cache is not None:
        hit = cache.load()
        if hit is not None:
            return EmbedResult(np.asarray(hit["embeds"]), dict(hit["failed"]), from_cache=True)
    rank, world = dist.get_rank(), dist.get_world_size()
    done: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    if cache is not None:
        cache.remove_stale_temps()
        done, failed = cache.load_partials()
    todo = [i for i in range(rank, len(dataset), world) if i not in done and i not in failed]
    loader = DataLoader(
        Subset(dataset, todo),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_views,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    new_since_flush = 0
    bar = progress_bar(total=len(todo), desc=desc, enabled=progress and rank == 0, unit="clip")
    with autocast_context(device, precision):
        for batch in loader:
            # items carry their *dataset* index (SegmentDataset puts it in the item), not the Subset position
            for index, message in batch["failed"]:
                failed[index] = message
                bar.write(f"[skip] item {index}: {message}")
            if "frames" in batch and len(batch["index"]):
                frames = batch["frames"]
                lead = frames.shape[:-4]
                flat = frames.reshape(-1, *frames.shape[-4:]).to(device, non_blocking=True)
                out = encode(flat).float().cpu().numpy()
                out = out.reshape(*lead, out.shape[-1])
                for j, index in enumerate(batch["index"].tolist()):
                    done[index] = out[j]
            bar.update(len(batch["index"]) + len(batch["failed"]))
            new_since_flush += 1
            if cache is not None and new_since_flush >= flush_every:
                cache.save_partial(rank, done, failed)
                new_since_flush = 0
    bar.close()
    if cache is not None and new_since_flush:
        cache.save_partial(rank, done, failed)

    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (done, failed))
        for d, f in gathered:
            done.update(d)
            failed.update(f)
    embeds = _assemble(len(dataset), done, failed, allow_all_failed)
    if cache is not None:
        dist.barrier()
        if rank == 0:
            cache.save(embeds, failed, meta or {})
            cache.remove_partials()
        dist.barrier()
    return EmbedResult(embeds, failed, from_cache=False, seconds=time.time() - start_time)


def _assemble(n: int, done: dict[int, np.ndarray], failed: dict[int, str],
              allow_all_failed: bool = False) -> np.ndarray:
    missing = [i for i in range(n) if i not in done and i not in failed]
    if missing:
        raise RuntimeError(f"{len(missing)} items were neither embedded nor reported as failed: {missing[:10]}")
    if not done and allow_all_failed:
        return np.zeros((n, 0), dtype=np.float32)
    if not done:
        raise RuntimeError(f"no item could be embedded ({len(failed)} failed); first error: "
                           f"{next(iter(failed.values()), 'none')}")
    shape = next(iter(done.values())).shape
    out = np.full((n, *shape), np.nan, dtype=np.float32)
    for i, e in done.items():
        out[i] = e
    return out


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    *,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Unnormalised text embeddings ``float32 [len(texts), E]`` (CLIP BPE ids, or HF ids + attention mask)."""
    out = []
    with autocast_context(device, precision):
        for s in progress_bar(range(0, len(texts), batch_size), desc="texts", enabled=progress):
            tok = tokenizer(list(texts[s : s + batch_size]))
            if isinstance(tok, tuple):
                ids, mask = tok
                emb = model.encode_text(ids.to(device), attention_mask=mask.to(device))
            else:
                emb = model.encode_text(tok.to(device))
            out.append(emb.float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x / ||x|| along `axis` (float64 math, like torch's `x / x.norm()`: a zero vector gives NaN, as there)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / np.linalg.norm(x, axis=axis, keepdims=True)
