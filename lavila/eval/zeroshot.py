"""`lavila eval`: zero-shot (and fine-tuned) evaluation on EK-100 MIR/CLS, Charades-Ego, EGTEA and EgoMCQ.

The protocols are the reference's (spec §9), because the published numbers depend on them: frames per clip, how
frames are placed (segment midpoints, sparse over the whole video, dense strided windows, or the chunked Ego4D
loader), how many temporal clips and spatial crops are scored and how views are pooled (max over views then softmax
for zero-shot multi-view; mean then softmax for fine-tuned classifiers), which text stands for a class (the mean of
the normalised embeddings of all its narrations) and whether embeddings are normalised (not for EgoMCQ).

A checkpoint whose state dict has an ``fc_cls`` head is a fine-tuned classifier and is scored with its head;
anything else is a dual encoder scored against text. Video embeddings (or classifier logits) are cached on disk, so
a rerun only tokenises text and recomputes metrics. Under ``torchrun`` the clip list is sharded over ranks.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from tyro.conf import Positional

from lavila import dist
from lavila.atomic import atomic_write_text
from lavila.config import option
from lavila.data.benchmarks import (
    EK100MIR,
    ClassificationSet,
    DenseSampling,
    SegmentDataset,
    SegmentSampling,
    SparseSampling,
    VideoSegment,
    charades_set,
    egtea_set,
    ek100_action_label_map,
    ek100_cls_set,
    mcq_segments,
    read_egomcq,
    read_ek100_mir,
)
from lavila.errors import LavilaError
from lavila.eval import metrics
from lavila.eval.cache import EmbeddingCache, default_cache_dir, digest, file_fingerprint, items_digest
from lavila.eval.embed import (
    EmbedResult,
    embed_dataset,
    encode_texts,
    l2_normalize,
)
from lavila.models import ModelConfig, create_model, model_transforms
from lavila.models.factory import get_model_config

Benchmark = Literal["ek100_mir", "ek100_cls", "charades_ego", "egtea", "egomcq"]
BENCHMARKS: tuple[str, ...] = get_args(Benchmark)
TEMPLATES_DEFAULT = ["{}"]
TEMPLATES_EGO = ["#C C {}", "#C {}"]  # the reference's --cls-use-template


@dataclass(frozen=True)
class Protocol:
    """How clips are turned into views and views into one score (spec §9.7)."""

    clip_length: int
    sampling: str  # "segment" | "sparse" | "dense" | "chunked"
    clip_stride: int = 1
    num_clips: int = 1
    num_crops: int = 1
    center_crop_first: bool = False  # fine-tuned classifier eval: centre crop, then 3 (identical) crops
    view_pool: str = "max"  # "max" (zero-shot) or "mean" (fine-tuned)


ZERO_SHOT_PROTOCOLS: dict[str, Protocol] = {
    "ek100_mir": Protocol(4, "segment"),
    "ek100_cls": Protocol(4, "segment"),
    "charades_ego": Protocol(16, "sparse"),
    "egtea": Protocol(16, "dense", clip_stride=2, num_clips=10, num_crops=3),
    "egomcq": Protocol(4, "chunked"),
}
FINETUNED_CLASSIFIER_PROTOCOLS: dict[str, Protocol] = {
    "ek100_cls": Protocol(16, "segment", view_pool="mean"),
    "egtea": Protocol(16, "dense", clip_stride=2, num_clips=10, num_crops=3, center_crop_first=True, view_pool="mean"),
}


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: ModelConfig
    kind: str  # "dual_encoder" | "classifier"
    head_sizes: list[int]
    checkpoint: dict[str, Any]


def load_eval_model(path: str | Path, num_frames: int, model_name: str | None = None,
                    trust_checkpoint: bool = False) -> LoadedModel:
    """The checkpoint's dual encoder or fine-tuned classifier, rebuilt for ``num_frames`` frames, in eval mode.

    Reference fine-tuning checkpoints store the fine-tuning script's arguments, which do not name the backbone; pass
    ``model_name`` (``--model``) for those.
    """
    model = create_model(path, arch=model_name, kind=("dual_encoder", "classifier"), num_frames=num_frames,
                         trust_checkpoint=trust_checkpoint).eval()
    cfg = model.config
    return LoadedModel(model, cfg, cfg.kind, list(cfg.num_classes), model.checkpoint_meta)


def _encode_fn(loaded: LoadedModel):
    model = loaded.model
    if loaded.kind == "classifier":
        def encode(x: torch.Tensor) -> torch.Tensor:
            out = model(x)
            return torch.cat(out, dim=-1) if isinstance(out, list) else out
        return encode
    return model.encode_image


def _tokenizer(model_or_cfg: Any, args: Any):
    """The model's tokenizer: ``--tokenizer`` (or the older ``--bpe-path``), else the files saved beside its weights,
    else the row's."""
    from lavila.models import get_tokenizer, tokenizer_for

    source = getattr(args, "tokenizer", None) or getattr(args, "bpe_path", None)
    if isinstance(model_or_cfg, ModelConfig):
        return get_tokenizer(model_or_cfg, source)
    return tokenizer_for(model_or_cfg, source)


# ----------------------------------------------------------------------------------------------------------------
# Benchmark data
# ----------------------------------------------------------------------------------------------------------------


def _sibling(metadata: Path, given: str | None, name: str) -> Path:
    return Path(given) if given else metadata.parent / name


@dataclass
class BenchmarkData:
    segments: list
    cls: ClassificationSet | None = None
    mir: Any = None
    questions: list | None = None
    files: list[str] | None = None


def restrict_mir(mir: EK100MIR, limit: int | None) -> EK100MIR:
    """The first ``limit`` clips and only the sentences they stand for (smoke tests); ``None``/0 keeps all.

    Columns whose representative clip was dropped have to go too, or their relevancy rows would be all zero.
    """
    if not limit:
        return mir
    keep = {r.narration_id for r in mir.rows[:limit]}
    cols = [j for j, (nid, _) in enumerate(mir.sentences) if nid in keep]
    return replace(mir, rows=mir.rows[:limit], sentences=[mir.sentences[j] for j in cols],
                   relevancy=mir.relevancy[:limit][:, cols])


def mir_benchmark(mir: EK100MIR) -> BenchmarkData:
    segs = [VideoSegment(r.video_path, r.start_sec, r.stop_sec, "action") for r in mir.rows]
    return BenchmarkData(segs, mir=mir)


def load_benchmark(name: str, args: EvalJob) -> BenchmarkData:
    meta = Path(args.metadata)
    limit = args.limit
    if name == "ek100_mir":
        return mir_benchmark(restrict_mir(read_ek100_mir(meta, args.sentences, args.relevancy), limit))
    if name == "ek100_cls":
        train_csv = _sibling(meta, args.train_metadata, "EPIC_100_train.csv")
        label_map = ek100_action_label_map(train_csv, meta)
        cls = ek100_cls_set(meta, label_map)
    elif name == "charades_ego":
        cls = charades_set(meta, _sibling(meta, args.classes, "Charades_v1_classes.txt"))
    elif name == "egtea":
        cls = egtea_set(meta, _sibling(meta, args.classes, "action_idx.txt"))
    elif name == "egomcq":
        questions = read_egomcq(meta)[: limit or None]
        return BenchmarkData(mcq_segments(questions), questions=questions)
    else:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if limit:
        cls = replace(cls, segments=cls.segments[:limit], targets=cls.targets[:limit])
    return BenchmarkData(cls.segments, cls=cls)


def sampling_for(protocol: Protocol):
    if protocol.sampling in ("segment", "chunked"):
        return SegmentSampling(protocol.clip_length)
    if protocol.sampling == "sparse":
        return SparseSampling(protocol.clip_length, protocol.num_clips)
    if protocol.sampling == "dense":
        return DenseSampling(protocol.clip_length, protocol.clip_stride, protocol.num_clips)
    raise ValueError(f"unknown sampling {protocol.sampling!r}")


def build_dataset(data: BenchmarkData, protocol: Protocol, cfg: ModelConfig, root: str) -> SegmentDataset:
    # Sparse sampling yields one long clip of num_clips*clip_length frames, split into temporal views here.
    _, transform = model_transforms(cfg, num_clips=protocol.num_clips, num_crops=protocol.num_crops,
                                    clip_length=protocol.clip_length, center_crop_first=protocol.center_crop_first)
    return SegmentDataset(root, data.segments, sampling_for(protocol), transform)


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------


def class_text_embeddings(model, tokenizer, class_texts: list[list[str]], templates: list[str], device,
                          precision: str) -> np.ndarray:
    """Per class: mean of the L2-normalised embeddings of every (template x text), re-normalised (reference)."""
    flat, owner = [], []
    for k, texts in enumerate(class_texts):
        for tmpl in templates:
            for t in texts:
                flat.append(tmpl.format(t))
                owner.append(k)
    emb = l2_normalize(encode_texts(model, tokenizer, flat, device=device, precision=precision))
    owner_arr = np.array(owner)
    sums = np.zeros((len(class_texts), emb.shape[1]))
    np.add.at(sums, owner_arr, emb)
    counts = np.bincount(owner_arr, minlength=len(class_texts))[:, None]
    return l2_normalize(sums / counts)


def pool_views(view_scores: np.ndarray, pool: str) -> np.ndarray:
    """Zero-shot ``[N, V, K]`` -> ``[N, K]``: a single view is returned raw (the reference applies no softmax then);
    several views are max- (reference) or mean-pooled and then soft-maxed over classes."""
    if view_scores.shape[1] == 1:
        return view_scores[:, 0]
    return pool_then_softmax(view_scores, pool)


def pool_then_softmax(view_scores: np.ndarray, pool: str) -> np.ndarray:
    """Fine-tuned classifiers: views averaged (reference) or maxed, then softmax, whatever the number of views."""
    pooled = view_scores.max(axis=1) if pool == "max" else view_scores.mean(axis=1)
    return softmax(pooled)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def score_mir(video: EmbedResult, text_embed: np.ndarray, mir) -> dict[str, float]:
    ok = video.ok
    sim = metrics.ek100_mir_similarity(
        l2_normalize(np.nan_to_num(video.embeds[:, 0])), l2_normalize(text_embed),
        [r.narration_id for r in mir.rows], [nid for nid, _ in mir.sentences],
    )
    return metrics.ek100_mir_metrics(sim[ok], mir.relevancy[ok])


@torch.no_grad()
def mir_zero_shot(model: torch.nn.Module, tokenizer: Any, mir: EK100MIR, root: str | Path, clip_length: int,
                  device: torch.device, *, batch_size: int = 16, num_workers: int = 4, precision: str = "auto",
                  progress: bool = False) -> dict[str, float]:
    """Zero-shot EK-100 MIR (spec 9.1) of a dual encoder held in memory: the protocol of ``lavila eval ek100_mir``.

    The training loops call this after an epoch (pre-training, MIR fine-tuning), so the numbers they log are the
    ones ``lavila eval`` reports for the saved checkpoint: same frames, centre crop, text = each clip's narration,
    ``(s+1)/2`` similarity, official mAP/nDCG. The model is put in eval mode and restored afterwards; under
    ``torch.distributed`` the clips are sharded and every rank gets the full result. Adds ``num_failed``.
    """
    protocol = replace(ZERO_SHOT_PROTOCOLS["ek100_mir"], clip_length=clip_length)
    was_training = model.training
    model.eval()
    try:
        dataset = build_dataset(mir_benchmark(mir), protocol, model.config, str(root))
        video = embed_dataset(model.encode_image, dataset, device=device, batch_size=batch_size,
                              num_workers=num_workers, precision=precision, desc="EK-100 MIR clips",
                              progress=progress)
        text = encode_texts(model, tokenizer, [r.narration for r in mir.rows], device=device, precision=precision)
    finally:
        model.train(was_training)
    return {**score_mir(video, text, mir), "num_failed": float(len(video.failed))}


def score_classification(name: str, scores: np.ndarray, cls: ClassificationSet, ok: np.ndarray) -> dict[str, Any]:
    """Metrics of one ``[N, K]`` score matrix over the items that could be decoded."""
    scores, targets = scores[ok], cls.targets[ok]
    if name == "charades_ego":
        m = metrics.charades_map(scores, targets)
        return {"mAP": m["mAP"], "mAP_nanmean": m["mAP_nanmean"],
                "classes_without_positives": int(np.isnan(np.array(m["per_class_AP"], dtype=float)).sum())}
    if name == "egtea":
        acc = metrics.mean_class_accuracy(targets, scores.argmax(axis=1))
        return {"mean_class_acc": acc["mean_class_acc"], "top1": acc["overall_acc"]}
    out = metrics.topk_accuracy(scores, targets, ks=(1, 5))
    return {"action_top1": out["top1"], "action_top5": out["top5"]}


def score_finetuned_ek100(view_logits: np.ndarray, head_sizes: list[int], cls: ClassificationSet,
                          ok: np.ndarray, pool: str) -> dict[str, float]:
    """Verb/noun/action accuracy of a fine-tuned EK-100 classifier: three heads scored directly, or one action head
    whose softmax is summed over the actions sharing a verb (noun) (reference marginalisation)."""
    lm = cls.label_map
    assert lm is not None
    targets = cls.targets[ok]
    splits = np.cumsum(head_sizes)[:-1]
    heads = [pool_then_softmax(h, pool) for h in np.split(view_logits[ok], splits, axis=-1)]
    verb_t, noun_t = lm.verbs[targets], lm.nouns[targets]
    if len(heads) == 3:
        verb, noun, action = heads
    elif len(heads) == 1:
        action = heads[0]
        verb = np.zeros((action.shape[0], int(lm.verbs.max()) + 1))
        noun = np.zeros((action.shape[0], int(lm.nouns.max()) + 1))
        np.add.at(verb.T, lm.verbs, action.T)
        np.add.at(noun.T, lm.nouns, action.T)
    else:
        raise ValueError(f"EK-100 classifier must have 1 or 3 heads, this one has {len(heads)}")
    out = {}
    for label, s, t in (("verb", verb, verb_t), ("noun", noun, noun_t), ("action", action, targets)):
        acc = metrics.topk_accuracy(s, t, ks=(1, 5))
        out[f"{label}_top1"], out[f"{label}_top5"] = acc["top1"], acc["top5"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def resolve_protocol(args: EvalJob, kind: str) -> Protocol:
    base = ZERO_SHOT_PROTOCOLS[args.benchmark]
    if kind == "classifier":
        if args.benchmark not in FINETUNED_CLASSIFIER_PROTOCOLS:
            raise ValueError(f"a classifier checkpoint can only be evaluated on "
                             f"{', '.join(FINETUNED_CLASSIFIER_PROTOCOLS)}, not {args.benchmark}")
        base = FINETUNED_CLASSIFIER_PROTOCOLS[args.benchmark]
    changes = {k: getattr(args, k) for k in ("clip_length", "clip_stride", "num_clips", "num_crops")
               if getattr(args, k, None) is not None}
    if args.benchmark == "charades_ego" and args.sparse_sample is not None:
        changes["sampling"] = "sparse" if args.sparse_sample else "dense"
    if args.view_pool:
        changes["view_pool"] = args.view_pool
    return replace(base, **changes)


def evaluate(args: EvalJob) -> dict[str, Any]:
    """Run one benchmark; returns the result record (also written to ``--output`` by :func:`run`)."""
    info = dist.init_distributed() if dist.world_info_from_env().distributed else dist.DistInfo()
    device = dist.resolve_device(args.device)
    precision = dist.runnable_precision(device, args.precision, "this evaluation")  # before anything is loaded
    kind = get_model_config(args.checkpoint, arch=args.model).kind
    protocol = resolve_protocol(args, kind)
    loaded = load_eval_model(args.checkpoint, protocol.clip_length, args.model)
    model = loaded.model.to(device)
    cfg = loaded.config
    data = load_benchmark(args.benchmark, args)
    dataset = build_dataset(data, protocol, cfg, args.root)

    key_parts = {
        "checkpoint": file_fingerprint(args.checkpoint), "model": cfg.name, "kind": kind,
        "num_frames": protocol.clip_length, "protocol": asdict(protocol), "crop": cfg.vision.img_size,
        "root": str(Path(args.root).resolve()), "items": items_digest(data.segments), "precision": precision,
        "version": 1,
    }
    cache = None
    if not args.no_cache:
        cache = EmbeddingCache(Path(args.cache_dir) if args.cache_dir else default_cache_dir(), digest(key_parts))
    result = embed_dataset(
        _encode_fn(loaded), dataset, device=device, batch_size=args.batch_size, num_workers=args.workers,
        precision=precision, cache=cache, desc=f"{args.benchmark} clips", meta=key_parts,
    )

    record: dict[str, Any] = {
        "benchmark": args.benchmark,
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "model": cfg.name,
        "model_kind": kind,
        "protocol": asdict(protocol),
        "metadata": str(Path(args.metadata).resolve()),
        "root": str(Path(args.root).resolve()),
        "num_items": len(dataset),
        "num_failed": len(result.failed),
        "failed": [{"index": i, "error": e} for i, e in sorted(result.failed.items())[:100]],
        "world_size": info.world_size,
        "device": str(device),
        "precision": precision,
        "embeddings_from_cache": result.from_cache,
        "cache_file": str(cache.path) if cache else None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if dist.get_rank() != 0:
        return record
    ok = result.ok
    templates = TEMPLATES_EGO if args.cls_use_template else TEMPLATES_DEFAULT
    with torch.no_grad():
        if args.benchmark == "ek100_mir":
            tok = _tokenizer(loaded.model, args)
            texts = encode_texts(model, tok, [r.narration for r in data.mir.rows], device=device,
                                 precision=precision)
            record["metrics"] = score_mir(result, texts, data.mir)
            record["num_sentences"] = len(data.mir.sentences)
        elif args.benchmark == "egomcq":
            tok = _tokenizer(loaded.model, args)
            queries = encode_texts(model, tok, [q.query for q in data.questions], device=device,
                                   precision=precision)
            options = result.embeds[:, :, 0]  # [N, 5, E] (one view per option)
            scores = np.einsum("ne,nke->nk", queries.astype(np.float64), np.nan_to_num(options).astype(np.float64))
            record["metrics"] = metrics.egomcq_accuracy(
                scores[ok], np.array([q.answer for q in data.questions])[ok],
                np.array([q.type for q in data.questions])[ok])
        elif kind == "classifier":
            if args.benchmark == "ek100_cls":
                record["metrics"] = score_finetuned_ek100(result.embeds, loaded.head_sizes, data.cls, ok,
                                                          protocol.view_pool)
            else:
                scores = pool_then_softmax(result.embeds, protocol.view_pool)
                record["metrics"] = score_classification(args.benchmark, scores, data.cls, ok)
        else:
            tok = _tokenizer(loaded.model, args)
            classes = class_text_embeddings(model, tok, data.cls.class_texts, templates, device, precision)
            video = l2_normalize(np.nan_to_num(result.embeds))  # [N, V, E]
            view_scores = video @ classes.T  # cosine logits [N, V, K]
            scores = pool_views(view_scores, protocol.view_pool)
            if args.score == "softmax" and view_scores.shape[1] == 1:
                scores = softmax(scores)
            record["metrics"] = score_classification(args.benchmark, scores, data.cls, ok)
            record["templates"] = templates
    return record


def format_table(record: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in record.get("metrics", {}).items()]
    p = record["protocol"]
    head = (f"{record['benchmark']}  ({record['model_kind']} {record['model']}, {p['clip_length']} frames x "
            f"{p['num_clips']} clips x {p['num_crops']} crops, {p['sampling']} sampling)")
    lines = [head, "-" * len(head)]
    for k, v in rows:
        lines.append(f"{k:<28} {v:>10.3f}" if isinstance(v, float) and math.isfinite(v) else f"{k:<28} {v!s:>10}")
    lines.append(f"{'items':<28} {record['num_items']:>10d}")
    lines.append(f"{'failed (skipped)':<28} {record['num_failed']:>10d}")
    return "\n".join(lines)


def default_output(args: EvalJob) -> Path:
    stem = Path(args.checkpoint).stem
    frames = f"_{args.clip_length}f" if args.clip_length else ""
    return Path("eval_results") / stem / f"{args.benchmark}{frames}.json"


@dataclass
class EvalJob:
    """Zero-shot (or fine-tuned classifier) evaluation of one checkpoint on one benchmark.

    The protocol keys (``clip_length`` ... ``view_pool``) default to the reference's for the benchmark
    (:data:`ZERO_SHOT_PROTOCOLS`, :data:`FINETUNED_CLASSIFIER_PROTOCOLS`); setting one overrides that field only.
    """

    benchmark: Positional[Benchmark] = option(help="which benchmark")
    checkpoint: str = option(help="dual-encoder or fine-tuned classifier checkpoint")
    metadata: str = option(help="evaluation annotation file: EPIC_100_retrieval_test.csv / EPIC_100_validation.csv / "
                                "CharadesEgo_v1_test_only1st.csv / test_split1.txt / egomcq.json")
    root: str = option(help="video folder of the benchmark")
    model: str | None = option(None, "model name when the checkpoint does not record it")
    # annotation files (default: next to --metadata)
    sentences: str | None = option(None, "EK-100 MIR *_sentence.csv (default: next to --metadata)")
    relevancy: str | None = option(None, "EK-100 MIR relevancy pickle (default: next to --metadata)")
    train_metadata: str | None = option(None, "EK-100 CLS: EPIC_100_train.csv, for the label space (default: next "
                                              "to --metadata)")
    classes: str | None = option(None, "Charades_v1_classes.txt / EGTEA action_idx.txt (default: next to "
                                       "--metadata)")
    # protocol overrides
    clip_length: int | None = option(None, "frames per clip (EK-100 MIR: 4 or 16)", positive=True)
    clip_stride: int | None = option(None, "frame stride of dense windows", positive=True)
    num_clips: int | None = option(None, "temporal views per item", positive=True)
    num_crops: Literal[1, 3, 6] | None = option(None, "spatial views per item")
    sparse_sample: bool | None = option(None, "Charades-Ego: sparse over the whole video (--sparse-sample, the "
                                              "default) or dense strided windows (--no-sparse-sample)")
    view_pool: Literal["max", "mean"] | None = option(None, "how views are pooled")
    score: Literal["cosine", "softmax"] = option(
        "cosine", "single-view class scores: raw cosine (zero-shot) or softmax (fine-tuned Charades-Ego)")
    cls_use_template: bool = option(False, "class prompts '#C C {}' and '#C {}'")
    # running
    batch_size: int = option(16, "clips per batch", positive=True)
    workers: int = option(4, "decoding processes", min=0, aliases=("-j",))
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "auto = bf16 autocast where the device has bf16 units (Ampere+ GPU, AVX-512-BF16/AMX CPU), else fp32")
    limit: int | None = option(None, "only the first N items (smoke tests)", positive=True)
    cache_dir: str | None = option(None, "embedding cache (default $LAVILA_CACHE_DIR or ~/.cache/lavila)")
    cache: bool = option(True, "reuse/store video embeddings in the cache (--no-cache: always recompute)")
    bpe_path: str | None = option(None, "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz)")
    tokenizer: str | None = option(None, "HF tokenizer name or folder for DistilBERT models")
    output: str | None = option(None, "result JSON (default eval_results/<ckpt>/<benchmark>.json)")

    @property
    def no_cache(self) -> bool:
        return not self.cache


def run_eval(args: EvalJob) -> int:
    from lavila.models.hub import resolve_checkpoint

    args.checkpoint = str(resolve_checkpoint(args.checkpoint))  # a file, a released name or a URL (cached)
    from lavila.atomic import DiskFullError

    try:
        record = evaluate(args)
    except (DiskFullError, LavilaError):
        raise  # their own one line and exit code (1: the job failed), not a bad argument
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise LavilaError(str(err), exit_code=2) from err
    try:
        if dist.get_rank() != 0:
            return 0
        print(format_table(record))
        out = Path(args.output) if args.output else default_output(args)
        atomic_write_text(out, json.dumps(record, indent=2, default=_json_default) + "\n")
        print(f"wrote {out}")
        return 0
    finally:
        dist.barrier()
        dist.cleanup()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


__all__ = [
    "BENCHMARKS",
    "EvalJob",
    "FINETUNED_CLASSIFIER_PROTOCOLS",
    "Protocol",
    "ZERO_SHOT_PROTOCOLS",
    "class_text_embeddings",
    "evaluate",
    "load_eval_model",
    "mir_zero_shot",
    "pool_views",
    "restrict_mir",
    "run_eval",
    "score_classification",
    "score_mir",
]
