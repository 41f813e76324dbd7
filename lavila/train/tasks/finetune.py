"""Fine-tuning on the downstream benchmarks, as tasks of the shared training loop (``lavila train``).

Two tasks cover the reference's two scripts (spec §8.5-8.6):

* :class:`RetrievalFinetuneTask` (``main_finetune_retrieval.py``): the whole dual encoder, EK-100 MIR with the
  max-margin ranking loss (text = a random sentence whose relevancy to the clip is > 0.1), or Charades-Ego with the
  CLIP loss on trimmed clips; the temperature stays frozen;
* :class:`ClassificationFinetuneTask` (``main_finetune_classification.py``): the video tower plus linear head(s),
  EK-100 CLS (one 3806-way head, or verb/noun/action heads) and EGTEA (106 classes), label-smoothed cross-entropy.

Both start from a dual-encoder checkpoint (``pretrain_model``), rebuilt for ``clip_length`` frames (temporal
embedding inflated) with drop-path 0.1. The recipes are ``configs/finetune_*.yaml``; run them with
``lavila train configs/finetune_egtea.yaml --pretrain-model ckpt.pth --root ... --metadata ... --metadata-val ...``.

Reference quirk kept on purpose (``head_lr_quirk: true``): with the cosine schedule every parameter group,
the new head included, runs at ``schedule x lr_multiplier_on_backbone``, i.e. the head does *not* get a 10x larger
rate than the backbone. Set it false for the evidently intended behaviour (head at the full rate).

The loop asks each task for its optimiser: AdamW by default, SGD with momentum for the reference's classification
recipes (``use_sgd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lavila.config import ConfigError, Where, option
from lavila.data import benchmarks as B
from lavila.data.robust import DecodeFailures, ResilientDataset
from lavila.eval import metrics
from lavila.eval.embed import embed_dataset, l2_normalize
from lavila.eval.zeroshot import (
    class_text_embeddings,
    mir_zero_shot,
    restrict_mir,
    score_finetuned_ek100,
    softmax,
)
from lavila.models.transforms import eval_transform, train_transform
from lavila.train.config import TrainConfig
from lavila.train.optim import build_optimizer, clamp_logit_scale, is_no_decay
from lavila.train.tasks import Task

RETRIEVAL_DATASETS = ("ek100_mir", "charades_ego")
CLASSIFICATION_DATASETS = ("ek100_cls", "egtea")


@dataclass
class FinetuneConfig(TrainConfig):
    """``lavila train`` keys of both fine-tuning tasks (retrieval and classification), on top of TrainConfig."""

    pretrain_model: str = option("", "dual-encoder checkpoint to fine-tune (the reference's --pretrain-model)")
    pretrain_model_name: str = option("", "registry name when the checkpoint does not record its model")
    metadata_val: str = option("", "evaluation annotations: EPIC_100_retrieval_test.csv, EPIC_100_validation.csv, "
                                   "CharadesEgo_v1_test_only1st.csv, test_split1.txt")
    root_val: str = option("", "video root of the evaluation set (default: root)")
    classes: str = option("", "Charades_v1_classes.txt / EGTEA action_idx.txt (default: next to metadata_val)")
    label_metadata: list[str] | None = option(
        None, "EK-100 CLS: CSVs defining the action space (default: metadata + metadata_val, as the reference)")
    drop_path_rate: float = option(0.1, "stochastic depth in the video tower", min=0)
    dropout_rate: float = option(0.5, "dropout before the classification head(s)", min=0)
    num_classes: list[int] = option(default_factory=lambda: [3806], help="head sizes (97 300 3806 for V+N+A)")
    use_vn_classifier: bool = option(False, "EK-100 CLS: three heads (verb, noun, action)")
    use_sgd: bool = option(False, "SGD (momentum = betas[0]) instead of AdamW (classification recipes)")
    lr_multiplier_on_backbone: float = option(0.1, "learning-rate factor of the backbone", positive=True)
    head_lr_quirk: bool = option(True, "reference behaviour: the backbone multiplier applies to the head too")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing", min=0)
    margin: float = option(0.2, "EK-100 MIR max-margin ranking loss margin", min=0)
    eval_every: int = option(5, "evaluate the benchmark every N epochs (and after the last)", positive=True)
    eval_clip_stride: int | None = option(None, "dense eval stride (default: clip_stride)")
    eval_num_clips: int = option(1, "temporal views at evaluation (EGTEA recipe: 10)", positive=True)
    eval_num_crops: Literal[1, 3, 6] = option(1, "spatial views at evaluation (EGTEA recipe: 3)")
    eval_batch_size: int = option(16, "clips per evaluation batch", positive=True)
    eval_limit: int | None = option(None, "evaluate only the first N items (smoke tests)", positive=True)
    bpe_path: str = option("", "CLIP BPE vocabulary file (default: the tokenizer's search path)")
    max_decode_failures: float = option(0.05, "abort if more than this fraction of clips fail to decode", min=0)

    def validate(self, where: Where) -> None:
        super().validate(where)
        allowed = RETRIEVAL_DATASETS + CLASSIFICATION_DATASETS
        if self.dataset not in allowed:
            raise ConfigError(f"{where('dataset')}: fine-tuning reads one of {', '.join(allowed)}, "
                              f"got {self.dataset!r}")
        if self.use_vn_classifier and len(self.num_classes) != 3:
            raise ConfigError(f"{where('num_classes')}: use_vn_classifier needs 3 head sizes (97 300 3806)")


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------------


def load_pretrained_dual_encoder(cfg: TrainConfig, opts: FinetuneConfig) -> nn.Module:
    """The starting dual encoder, rebuilt for ``clip_length`` frames and drop-path, weights loaded strictly.

    Without ``pretrain_model`` the model is built from ``cfg.model`` (+ ``model_overrides``) with random weights.
    """
    from lavila.models import create_model

    overrides = {"num_frames": cfg.clip_length, "drop_path_rate": opts.drop_path_rate}
    if not opts.pretrain_model:
        return create_model(cfg.model, **{**cfg.model_overrides, **overrides})
    model = create_model(opts.pretrain_model, arch=opts.pretrain_model_name or None, kind="dual_encoder",
                         trust_checkpoint=cfg.trust_checkpoint, **overrides)
    print(f"=> fine-tuning {model.config.name} from {opts.pretrain_model} ({cfg.clip_length} frames)")
    return model


def _crop_and_norm(model: nn.Module) -> tuple[int, tuple, tuple]:
    cfg = model.config
    return cfg.vision.img_size, cfg.preprocess.mean, cfg.preprocess.std


def _sibling(path: str, given: str, name: str) -> Path:
    return Path(given) if given else Path(path).parent / name


def _tokenize_one(tokenizer: Any, text: str) -> dict[str, torch.Tensor]:
    out = tokenizer([text])
    if isinstance(out, tuple):
        return {"text": out[0][0], "attention_mask": out[1][0]}
    return {"text": out[0]}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Training batches: single-view frames ``[B,3,T,H,W]`` plus the stacked extras."""
    batch = B.collate_views(items)
    if batch["failed"]:  # only reachable without ResilientDataset
        raise RuntimeError(f"training batch with undecodable items: {batch['failed'][:3]}")
    batch.pop("failed")
    batch.pop("index")
    batch["video"] = batch.pop("frames")[:, 0]
    return batch


class EveryN:
    """Which end-of-epoch evaluations run (reference: every 5 epochs and after the last).

    Keyed on the number of finished epochs the loop hands the task, so the schedule survives a resume.
    """

    def __init__(self, every: int, total: int) -> None:
        self.every, self.total = every, total

    def __call__(self, epochs_done: int) -> bool:
        return epochs_done % self.every == 0 or epochs_done == self.total


# ----------------------------------------------------------------------------------------------------------------
# Retrieval fine-tuning: EK-100 MIR (max-margin) and Charades-Ego (CLIP loss)
# ----------------------------------------------------------------------------------------------------------------


class FinetuneTask(Task):
    """What both fine-tuning tasks share: the benchmark evaluation every ``eval_every`` epochs, in eval mode."""

    Config = FinetuneConfig
    opts: FinetuneConfig

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        self._should_eval = EveryN(self.opts.eval_every, cfg.epochs)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float] | None:
        if not self.opts.metadata_val or not self._should_eval(self.epoch):
            return None
        was_training = model.training
        model.eval()
        try:
            return self._evaluate(model, device)
        finally:
            model.train(was_training)

    def _evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        raise NotImplementedError


class RetrievalFinetuneTask(FinetuneTask):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        if cfg.dataset not in RETRIEVAL_DATASETS:
            raise ConfigError(f"key 'dataset': retrieval fine-tuning reads {RETRIEVAL_DATASETS}, got {cfg.dataset!r}")
        self._tokenizer: Any = None
        self._model_cfg: Any = None

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from lavila.models import get_tokenizer

            row = self._model_cfg if self._model_cfg is not None else self.cfg.model
            self._tokenizer = get_tokenizer(row, self.opts.bpe_path or None)
        return self._tokenizer

    def build_model(self) -> nn.Module:
        model = load_pretrained_dual_encoder(self.cfg, self.opts)
        model.freeze_temperature()  # spec 8.5: logit_scale frozen in retrieval fine-tuning
        if self.cfg.use_checkpoint:
            model.set_grad_checkpointing(True)
        self._model_cfg = model.config
        return model

    def build_criterion(self) -> nn.Module:
        from lavila.models.losses import CLIPLoss, MaxMarginRankingLoss

        if self.cfg.dataset == "ek100_mir":
            return MaxMarginRankingLoss(margin=self.opts.margin)
        return CLIPLoss(use_vissl=True)

    def _ensure_model_cfg(self) -> None:
        if self._model_cfg is None:  # datasets built before the model (e.g. in tests)
            self._model_cfg = load_pretrained_dual_encoder(self.cfg, self.opts).config

    def build_train_dataset(self) -> Dataset:
        self._ensure_model_cfg()
        crop = self._model_cfg.vision.img_size
        mean, std = self._model_cfg.preprocess.mean, self._model_cfg.preprocess.std
        transform = train_transform(crop, mean, std)
        sampling = B.SegmentSampling(self.cfg.clip_length)
        tok = self.tokenizer()
        if self.cfg.dataset == "ek100_mir":
            mir = B.read_ek100_mir(self.cfg.metadata)
            sentences = [s for _, s in mir.sentences]
            positives = [np.flatnonzero(mir.relevancy[i] > 0.1) for i in range(len(mir.rows))]
            # The reference returns None for a clip without any positive sentence (and then crashes); skip them.
            keep = [i for i, p in enumerate(positives) if p.size]
            segs = [B.VideoSegment(mir.rows[i].video_path, mir.rows[i].start_sec, mir.rows[i].stop_sec, "action")
                    for i in keep]

            def extras(j: int) -> dict[str, Any]:
                i = keep[j]
                pos = int(np.random.choice(positives[i]))  # numpy global RNG: seeded per item by the loop
                return {**_tokenize_one(tok, sentences[pos]), "relevancy": float(mir.relevancy[i, pos])}

            data = B.SegmentDataset(self.cfg.root, segs, sampling, transform, jitter=True, extras=extras,
                                    raise_errors=True)
        else:
            from lavila.data.metadata import load_metadata

            rows = load_metadata(self.cfg.metadata)
            segs = [B.ChunkedSegment(str(r[0]), float(r[1]), float(r[2]), chunk_len=-1, fps=-1) for r in rows]
            texts = [r[3] if isinstance(r[3], str) else str(r[3][0]) for r in rows]
            data = B.SegmentDataset(self.cfg.root, segs, sampling, transform, jitter=True,
                                    extras=lambda j: _tokenize_one(tok, texts[j]), raise_errors=True)
        return ResilientDataset(data, DecodeFailures(self.opts.max_decode_failures))

    def collate(self, items: list[Any]) -> dict[str, Any]:
        return _collate(items)

    def compute_loss(self, model: nn.Module, criterion: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(batch["video"], batch["text"], batch.get("attention_mask"))
        out = {k: v.float() for k, v in out.items()}
        return criterion(out)

    def after_optimizer_step(self, model: nn.Module, criterion: nn.Module) -> None:
        clamp_logit_scale(model)

    def _evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        crop, mean, std = _crop_and_norm(model)
        root = self.opts.root_val or self.cfg.root
        limit = self.opts.eval_limit
        tok = self.tokenizer()
        if self.cfg.dataset == "ek100_mir":
            mir = restrict_mir(B.read_ek100_mir(self.opts.metadata_val), limit)
            out = mir_zero_shot(model, tok, mir, root, self.cfg.clip_length, device,
                                batch_size=self.opts.eval_batch_size, num_workers=self.cfg.workers)
            return {**out, "score": out["mAP_avg"]}
        s = B.charades_set(self.opts.metadata_val, _sibling(self.opts.metadata_val, self.opts.classes,
                                                            "Charades_v1_classes.txt"))
        if limit:
            s = B.ClassificationSet(s.segments[:limit], s.targets[:limit], s.class_texts, s.class_names, True)
        sampling = (B.SparseSampling(self.cfg.clip_length) if self.cfg.sparse_sample
                    else B.DenseSampling(self.cfg.clip_length, self.cfg.clip_stride, 1))
        ds = B.SegmentDataset(root, s.segments, sampling, eval_transform(crop, mean, std))
        video = embed_dataset(model.encode_image, ds, device=device, batch_size=self.opts.eval_batch_size,
                              num_workers=self.cfg.workers, desc="eval clips", progress=False)
        classes = class_text_embeddings(model, tok, s.class_texts, ["{}"], device, "auto")
        # fine-tuned protocol: softmax over classes of cosine similarities (temperature 1)
        scores = softmax(l2_normalize(np.nan_to_num(video.embeds[:, 0])) @ classes.T)
        m = metrics.charades_map(scores[video.ok], s.targets[video.ok])
        return {"mAP": m["mAP"], "mAP_nanmean": m["mAP_nanmean"], "num_failed": float(len(video.failed)),
                "score": m["mAP_nanmean"]}


# ----------------------------------------------------------------------------------------------------------------
# Classification fine-tuning: EK-100 CLS and EGTEA
# ----------------------------------------------------------------------------------------------------------------


class ClassificationLoss(nn.Module):
    """Label-smoothed cross-entropy; the V+N+A classifier sums the three heads' losses (spec 7.5)."""

    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor | list[torch.Tensor], targets: list[torch.Tensor]) -> dict:
        heads = logits if isinstance(logits, list) else [logits]
        if len(heads) != len(targets):
            raise ValueError(f"{len(heads)} heads but {len(targets)} target sets")
        losses = [self.ce(h.float(), t) for h, t in zip(heads, targets)]
        out: dict[str, torch.Tensor] = {"loss": torch.stack(losses).sum()}
        names = ["verb", "noun", "action"] if len(heads) == 3 else ["action"]
        for name, h, t, loss in zip(names, heads, targets, losses):
            out[f"{name}_loss"] = loss.detach()
            out[f"{name}_acc1"] = 100 * (h.detach().argmax(-1) == t).float().mean()
        return out


class ClassificationFinetuneTask(FinetuneTask):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        if cfg.dataset not in CLASSIFICATION_DATASETS:
            raise ConfigError(f"key 'dataset': classification fine-tuning reads {CLASSIFICATION_DATASETS}, "
                              f"got {cfg.dataset!r}")
        self._label_map: B.ActionLabelMap | None = None
        self._model_cfg: Any = None

    # --- labels -------------------------------------------------------------------------------------------------
    def label_map(self) -> B.ActionLabelMap:
        if self._label_map is None:
            files = self.opts.label_metadata or [self.cfg.metadata] + ([self.opts.metadata_val]
                                                                        if self.opts.metadata_val else [])
            self._label_map = B.ek100_action_label_map(*files)
        return self._label_map

    def _targets(self, action: int) -> dict[str, int]:
        if self.opts.use_vn_classifier:
            lm = self.label_map()
            return {"verb": int(lm.verbs[action]), "noun": int(lm.nouns[action]), "label": action}
        return {"label": action}

    # --- model --------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from lavila.models.classifier import build_classifier

        dual = load_pretrained_dual_encoder(self.cfg, self.opts)
        self._model_cfg = dual.config
        heads = self.opts.num_classes if self.opts.use_vn_classifier else self.opts.num_classes[:1]
        model = build_classifier(dual.visual, heads, self.opts.dropout_rate, config=dual.config)
        if self.cfg.use_checkpoint:
            model.visual.set_grad_checkpointing(True)
        return model

    def build_criterion(self) -> nn.Module:
        return ClassificationLoss(self.opts.label_smoothing)

    def param_groups(self, model: nn.Module, criterion: nn.Module) -> list[dict]:
        """The reference's four groups: backbone decay / no-decay at ``lr x multiplier``, head weight / bias.

        ``lr_scale`` is applied by the loop's schedule on every step. With ``head_lr_quirk`` (reference) the head gets
        the multiplier too; otherwise the head runs at the full rate.
        """
        mult = self.opts.lr_multiplier_on_backbone
        head_scale = mult if self.opts.head_lr_quirk else 1.0
        wd, nwd, hwd, hnwd = [], [], [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "fc_cls" in name:
                (hnwd if "bias" in name else hwd).append(p)
            else:
                (nwd if is_no_decay(name, p) else wd).append(p)
        return [
            {"params": wd, "weight_decay": self.cfg.wd, "lr_scale": mult, "name": "backbone_decay"},
            {"params": nwd, "weight_decay": 0.0, "lr_scale": mult, "name": "backbone_no_decay"},
            {"params": hwd, "weight_decay": self.cfg.wd, "lr_scale": head_scale, "name": "head_weight"},
            {"params": hnwd, "weight_decay": 0.0, "lr_scale": head_scale, "name": "head_bias"},
        ]

    def build_optimizer(self, param_groups: list[dict], use_zero: bool = False) -> torch.optim.Optimizer:
        """SGD with momentum ``betas[0]`` (``use_sgd``, the documented recipes) or the loop's AdamW."""
        if not self.opts.use_sgd:
            return super().build_optimizer(param_groups, use_zero)
        return build_optimizer(param_groups, self.cfg.lr, self.cfg.betas, self.cfg.eps, self.cfg.wd,
                               use_zero=use_zero, optimizer_class=torch.optim.SGD,
                               momentum=self.cfg.betas[0])

    # --- data ---------------------------------------------------------------------------------------------------
    def _crop_norm(self) -> tuple[int, tuple, tuple]:
        if self._model_cfg is None:
            self._model_cfg = load_pretrained_dual_encoder(self.cfg, self.opts).config
        p = self._model_cfg.preprocess
        return self._model_cfg.vision.img_size, p.mean, p.std

    def _split(self, metadata: str) -> tuple[B.ClassificationSet, Any]:
        if self.cfg.dataset == "ek100_cls":
            return B.ek100_cls_set(metadata, self.label_map()), B.SegmentSampling(self.cfg.clip_length)
        actions = _sibling(self.opts.metadata_val or metadata, self.opts.classes, "action_idx.txt")
        return B.egtea_set(metadata, actions), None

    def build_train_dataset(self) -> Dataset:
        crop, mean, std = self._crop_norm()
        s, sampling = self._split(self.cfg.metadata)
        if sampling is None:  # EGTEA: one random dense window of clip_length x clip_stride frames
            sampling = B.DenseSampling(self.cfg.clip_length, self.cfg.clip_stride, 1)
        targets = s.targets
        data = B.SegmentDataset(self.cfg.root, s.segments, sampling, train_transform(crop, mean, std, hflip=True),
                                jitter=True, extras=lambda i: self._targets(int(targets[i])), raise_errors=True)
        return ResilientDataset(data, DecodeFailures(self.opts.max_decode_failures))

    def collate(self, items: list[Any]) -> dict[str, Any]:
        return _collate(items)

    def compute_loss(self, model: nn.Module, criterion: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = model(batch["video"])
        keys = ["verb", "noun", "label"] if isinstance(logits, list) and len(logits) == 3 else ["label"]
        return criterion(logits, [batch[k] for k in keys])

    # --- evaluation ---------------------------------------------------------------------------------------------
    def _evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        crop, mean, std = self._crop_norm()
        s, sampling = self._split(self.opts.metadata_val)
        if sampling is None:
            sampling = B.DenseSampling(self.cfg.clip_length, self.opts.eval_clip_stride or self.cfg.clip_stride,
                                       self.opts.eval_num_clips)
        limit = self.opts.eval_limit
        if limit:
            s = B.ClassificationSet(s.segments[:limit], s.targets[:limit], s.class_texts, s.class_names,
                                    label_map=s.label_map)
        transform = eval_transform(crop, mean, std, num_clips=self.opts.eval_num_clips,
                                   num_crops=self.opts.eval_num_crops, clip_length=self.cfg.clip_length,
                                   center_crop_first=True)
        ds = B.SegmentDataset(self.opts.root_val or self.cfg.root, s.segments, sampling, transform)

        def logits(x: torch.Tensor) -> torch.Tensor:
            out = model(x)
            return torch.cat(out, dim=-1) if isinstance(out, list) else out

        res = embed_dataset(logits, ds, device=device, batch_size=self.opts.eval_batch_size,
                            num_workers=self.cfg.workers, desc="eval clips", progress=False)
        ok = res.ok
        if self.cfg.dataset == "ek100_cls":
            sizes = [h.out_features for h in (model.fc_cls if isinstance(model.fc_cls, nn.ModuleList)
                                              else [model.fc_cls])]
            out = score_finetuned_ek100(res.embeds, sizes, s, ok, "mean")
            return {**out, "num_failed": float(len(res.failed)), "score": out["action_top1"]}
        probs = softmax(res.embeds.mean(axis=1))  # views averaged before the softmax (reference)
        acc = metrics.mean_class_accuracy(s.targets[ok], probs[ok].argmax(axis=1))
        return {"mean_class_acc": acc["mean_class_acc"], "top1": acc["overall_acc"],
                "num_failed": float(len(res.failed)), "score": acc["overall_acc"]}


__all__ = [
    "ClassificationFinetuneTask",
    "ClassificationLoss",
    "FinetuneConfig",
    "RetrievalFinetuneTask",
    "load_pretrained_dual_encoder",
]
