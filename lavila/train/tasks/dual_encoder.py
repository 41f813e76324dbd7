"""Dual-encoder (CLIP-style video-text) pre-training: the baseline (human narrations) and LaViLa (+ narrator text)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, default_collate

from lavila.config import ConfigError, Where, option
from lavila.data.metadata import val_metadata_path
from lavila.train.config import TrainConfig
from lavila.train.optim import clamp_logit_scale
from lavila.train.tasks import Task

# ---------------------------------------------------------------------------------------------------------------
# Dual-encoder (CLIP-style video-text) pre-training: baseline and LaViLa
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DualEncoderConfig(TrainConfig):
    """``lavila train`` keys of dual-encoder pre-training (the baseline and LaViLa recipes), on top of TrainConfig."""

    norm_embed: bool = option(False, "L2-normalise both embeddings inside the model (every released model)")
    freeze_temperature: bool = option(False, "keep logit_scale fixed at log(1/temperature_init)")
    temperature_init: float = option(0.07, "initial temperature", positive=True)
    contrastive_use_vissl: bool = option(False, "global-batch loss with gather-with-gradient (VISSL style)")
    freeze_pseudo_temperature: bool = option(False, "keep the narrator-pair temperature fixed (SSL loss)")
    pseudo_temperature_init: float = option(0.07, "initial temperature of narrator-text pairs", positive=True)
    metadata_aux: list[str] | None = option(
        None, "extra (narrator) metadata files mixed in as pseudo-labelled data -> SSLCLIPLoss")
    project_embed_dim: int = option(256, "joint embedding size", positive=True)
    use_cls_token: bool = option(False, "recorded in args for loaders (the reference flag); DistilBERT towers "
                                 "always pool at CLS, CLIP text towers at EOT")
    drop_path_rate: float = option(0.0, "stochastic depth in the video tower", min=0)
    pretrained: bool = option(True, "initialise the towers as the reference does: OpenAI CLIP (visual, CLIP text) "
                              "and pretrained DistilBERT")
    tokenizer: str = option("", "tokenizer files (a folder or file) when the row's cannot be found offline")
    clip_weights: str = option("", "OpenAI CLIP weights (.pt file, HF folder or hub name); default by model")
    ssl_faithful: bool = option(True, "SSL loss: bool GT indicators (human/human pairs use the mixed scale, "
                                "as the reference did); false = intended 3-way temperature rule")
    video_chunk_len: int = option(300, "ego4d: seconds per video chunk; -1 = <root>/<uid>.mp4 whole videos")
    video_fps: float = option(30, "ego4d: frame rate of the chunks; -1 = read from each file")
    max_decode_failures: float = option(0.05, "abort if more than this fraction of clips fail to decode", min=0)
    # per-epoch zero-shot EK-100 MIR (the reference's end-of-epoch check; ego4d only)
    eval_ek100_mir_metadata: str = option(
        "", "EPIC_100_retrieval_test.csv: zero-shot EK-100 MIR after every epoch (clip_length frames, centre "
            "crop), checkpoint_best.pt follows its avg mAP as in the reference; empty = off")
    eval_ek100_mir_root: str = option("datasets/EK100/video_ht256px/", "EK-100 video folder (<PID>/<VID>.MP4) "
                                      "of that evaluation")
    eval_ek100_mir_sentences: str = option("", "EK-100 MIR *_sentence.csv (default: next to the CSV)")
    eval_ek100_mir_relevancy: str = option("", "EK-100 MIR relevancy pickle (default: relevancy/"
                                           "caption_relevancy_EPIC_100_retrieval_test.pkl next to the CSV)")
    eval_limit: int | None = option(None, "evaluate only the first N EK-100 MIR clips (smoke tests)", positive=True)
    eval_batch_size: int = option(16, "clips per EK-100 MIR evaluation batch (reference: 16)", positive=True)
    # embedded synthetic data (dataset: synthetic)
    synthetic_train_size: int = option(2048, "synthetic: training clips", positive=True)
    synthetic_eval_groups: int = option(4, "synthetic: held-out groups of 24 clips for retrieval eval", min=0)
    synthetic_text: Literal["human", "rephraser", "narrator"] = option(
        "human", "synthetic: text source of the main set")
    synthetic_distractor_prob: float = option(0.5, "synthetic: probability of a static distractor object", min=0)

    def validate(self, where: Where) -> None:
        super().validate(where)
        if self.dataset not in ("ego4d", "synthetic"):
            raise ConfigError(f"{where('dataset')}: the dual_encoder task reads 'ego4d' or 'synthetic', "
                              f"got {self.dataset!r}")
        if self.dataset == "ego4d" and "train" not in self.metadata:
            raise ConfigError(f"{where('metadata')}: must contain 'train' (the validation file is found by "
                              f"replacing it with 'val'), got {self.metadata!r}")
        if self.eval_ek100_mir_metadata:
            self._validate_ek100_mir(where)
        if self.dataset == "synthetic":
            for src in self.metadata_aux or []:
                if src not in ("human", "rephraser", "narrator"):
                    raise ConfigError(f"{where('metadata_aux')}: with dataset synthetic each entry names a text "
                                      f"source (human, rephraser, narrator), got {src!r}")


    def ek100_mir_files(self) -> tuple[Path, Path]:
        """(sentence CSV, relevancy pickle): the given paths, else the reference's places next to the test CSV."""
        from lavila.data.benchmarks import ek100_relevancy_path, ek100_sentence_path

        csv = self.eval_ek100_mir_metadata
        return (Path(self.eval_ek100_mir_sentences or ek100_sentence_path(csv)),
                Path(self.eval_ek100_mir_relevancy or ek100_relevancy_path(csv)))

    def _validate_ek100_mir(self, where: Where) -> None:
        """Missing EK-100 files must stop the run now, not after the first epoch of training."""
        key = "eval_ek100_mir_metadata"
        if self.dataset == "synthetic":
            raise ConfigError(f"{where(key)}: the synthetic set's word tokenizer cannot read EK-100 narrations; "
                              "set it only with dataset ego4d (or to '' to turn the evaluation off)")
        if not Path(self.eval_ek100_mir_metadata).is_file():
            raise ConfigError(f"{where(key)}: {self.eval_ek100_mir_metadata} not found (EK-100 MIR is evaluated "
                              f"after every epoch; pass --eval-ek100-mir-metadata '' to train without it)")
        if not Path(self.eval_ek100_mir_root).is_dir():
            raise ConfigError(f"{where('eval_ek100_mir_root')}: EK-100 video folder {self.eval_ek100_mir_root} "
                              "not found")
        try:
            sentences, relevancy = self.ek100_mir_files()
        except ValueError as err:  # the relevancy file is named after the CSV's split
            raise ConfigError(f"{where(key)}: {err}; or set eval_ek100_mir_relevancy") from err
        for name, path in (("eval_ek100_mir_sentences", sentences), ("eval_ek100_mir_relevancy", relevancy)):
            if path.is_file():
                continue
            if getattr(self, name):
                raise ConfigError(f"{where(name)}: {path} not found")
            raise ConfigError(f"{where(key)}: {path} (expected next to the CSV) not found; or set {name}")


def as_item_dict(item: Any) -> dict:
    """Normalise a dataset item to ``{video, text[, attention_mask][, gt]}``.

    Accepts dicts (the synthetic set), the reference's tuples ``(frames, ids[, mask], relevancy)`` and the mix's
    ``(indicator, item)`` pairs.
    """
    if isinstance(item, dict):
        return dict(item)
    if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], int | bool) \
            and isinstance(item[1], list | tuple | dict):
        out = as_item_dict(item[1])  # (indicator, item) from the --metadata-aux mix: 1 human, 0 narrator
        out["gt"] = bool(item[0])
        return out
    if isinstance(item, list | tuple):
        # (frames, ids[, mask], relevancy) or (frames, ids)
        out = {"video": item[0], "text": item[1]}
        if len(item) >= 3 and isinstance(item[2], torch.Tensor) and item[2].shape == torch.as_tensor(item[1]).shape:
            out["attention_mask"] = item[2]
        return out
    raise TypeError(f"dataset item must be a dict or a (frames, text, ...) tuple, got {type(item).__name__}")


class DualEncoderTask(Task):
    """CLIP-style video-text pre-training: the baseline (human narrations) and LaViLa (+ narrator text).

    With ``metadata_aux`` the main set's items are marked human (``gt``), each auxiliary set's narrator, all are
    concatenated and shuffled together, and the loss becomes SSLCLIPLoss with its own pseudo temperature.
    """

    Config = DualEncoderConfig
    opts: DualEncoderConfig

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        self._tokenizer: Any = None
        self._ek100_mir: Any = None  # annotations read once, at the first evaluation

    # --- text ---------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The row's tokenizer (checked against it), or the synthetic world's word vocabulary."""
        if self._tokenizer is None:
            if self.cfg.dataset == "synthetic":
                from lavila.data.synthetic import synthetic_tokenizer

                self._tokenizer = synthetic_tokenizer(self.cfg.model_overrides.get("text_context_length", 16))
            else:
                from lavila.models import get_tokenizer

                self._tokenizer = get_tokenizer(self.model_config(), self.opts.tokenizer or None)
        return self._tokenizer

    # --- model --------------------------------------------------------------------------------------------------
    def model_overrides(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "num_frames": self.cfg.clip_length,
            "embed_dim": self.opts.project_embed_dim,
            "norm_embed": self.opts.norm_embed,
            "temperature_init": self.opts.temperature_init,
            "drop_path_rate": self.opts.drop_path_rate,
        }
        if self.cfg.dataset == "synthetic":
            tok = self.tokenizer
            kw.update(text_vocab_size=tok.vocab_size, text_context_length=tok.context_length, tokenizer_kind="word",
                      tokenizer_name=None, tokenizer_vocab_size=None, tokenizer_bos_id=tok.bos_token_id,
                      tokenizer_eos_id=tok.eos_token_id, tokenizer_context_length=None)
        kw.update(self.cfg.model_overrides)
        return kw

    def model_config(self) -> Any:
        from lavila.models import get_config

        return get_config(self.cfg.model, **self.model_overrides())

    def build_model(self) -> nn.Module:
        """The factory's model; with ``pretrained`` every pretrained tower (CLIP, DistilBERT) comes from it too."""
        from lavila.models import create_model

        pretrained = (self.opts.clip_weights or True) if self.opts.pretrained else False
        model = create_model(self.cfg.model, pretrained=pretrained, **self.model_overrides())
        report = getattr(model, "init_report", None)
        if report:
            print(f"initialised from OpenAI CLIP ({report['source']}); projections: {report['projections']}")
        if self.cfg.use_checkpoint:
            model.set_grad_checkpointing(True)
        if self.opts.freeze_temperature:
            model.freeze_temperature()
        return model

    def build_criterion(self) -> nn.Module:
        from lavila.models.losses import CLIPLoss, SSLCLIPLoss

        if self.opts.metadata_aux:
            return SSLCLIPLoss(pseudo_temperature_init=self.opts.pseudo_temperature_init,
                               freeze=self.opts.freeze_pseudo_temperature, faithful=self.opts.ssl_faithful)
        return CLIPLoss(use_vissl=self.opts.contrastive_use_vissl)

    # --- data ---------------------------------------------------------------------------------------------------
    def _synthetic(self, split: str, size: int, text_source: str, seed_offset: int = 0) -> Dataset:
        from lavila.data.synthetic import SyntheticEgoClips

        row = self.model_config()
        return SyntheticEgoClips(split, size, num_frames=self.cfg.clip_length, img_size=row.vision.img_size,
                                 text_source=text_source, seed=self.cfg.seed + seed_offset, tokenizer=self.tokenizer,
                                 preprocess=row.preprocess, distractor_prob=self.opts.synthetic_distractor_prob)

    def _ego4d_kwargs(self, is_training: bool) -> dict[str, Any]:
        from lavila.models import model_transforms

        train, evaluation = model_transforms(self.model_config())
        transform = train if is_training else evaluation
        return {"transform": transform, "tokenizer": self.tokenizer, "clip_length": self.cfg.clip_length,
                "is_training": is_training, "chunk_len": self.opts.video_chunk_len, "fps": self.opts.video_fps,
                "seed": self.cfg.seed}

    def build_train_dataset(self) -> Dataset:
        """The main set, or main + auxiliary sets as ``(1, item)`` / ``(0, item)`` shuffled together."""
        from lavila.data.datasets import LabeledDataset, build_pretrain_dataset
        from lavila.data.robust import DecodeFailures

        if self.cfg.dataset == "ego4d":
            return build_pretrain_dataset(self.cfg.root, self.cfg.metadata, self.opts.metadata_aux or (),
                                          failures=DecodeFailures(self.opts.max_decode_failures),
                                          **self._ego4d_kwargs(is_training=True))
        main = self._synthetic("train", self.opts.synthetic_train_size, self.opts.synthetic_text)
        if not self.opts.metadata_aux:
            return main
        aux = [self._synthetic("train", self.opts.synthetic_train_size, src, seed_offset=1 + i)
               for i, src in enumerate(self.opts.metadata_aux)]
        return ConcatDataset([LabeledDataset(main, 1)] + [LabeledDataset(a, 0) for a in aux])

    def build_val_dataset(self) -> Dataset | None:
        """Validation loss data: the training metadata with ``train`` -> ``val`` (reference rule), human text."""
        from lavila.data.datasets import LabeledDataset, build_pretrain_dataset
        from lavila.data.robust import DecodeFailures

        if self.cfg.dataset == "synthetic":
            val: Dataset = self._synthetic("val", 96, "human")
        else:
            path = val_metadata_path(self.cfg.metadata)
            if not Path(path).is_file():
                raise FileNotFoundError(f"validation metadata {path} (metadata with train -> val) not found; "
                                        "the validation loss runs every eval_freq epochs")
            val = build_pretrain_dataset(self.cfg.root, path, failures=DecodeFailures(self.opts.max_decode_failures),
                                         **self._ego4d_kwargs(is_training=False))
        return LabeledDataset(val, 1) if self.opts.metadata_aux else val

    def collate(self, items: list[Any]) -> dict[str, Any]:
        items = [as_item_dict(it) for it in items]
        batch = default_collate([{k: v for k, v in it.items() if k != "caption"} for it in items])
        if "gt" in batch:
            batch["gt"] = batch["gt"].bool()
        return batch

    # --- step ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, criterion: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(batch["video"], batch["text"], batch.get("attention_mask"))
        out = {k: v.float() for k, v in out.items()}
        if "gt" in batch:
            out["gt_indicators"] = batch["gt"]
        # The loss in fp32 even under autocast: autocast would run the similarity matmul in bf16, whose spacing at
        # logit_scale 100 is 0.5 (tests/train/test_precision.py checks autocast is off inside the loss).
        with torch.autocast(out["image_embed"].device.type, enabled=False):
            return criterion(out)

    def after_optimizer_step(self, model: nn.Module, criterion: nn.Module) -> None:
        clamp_logit_scale(model)

    # --- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float] | None:
        if self.opts.eval_ek100_mir_metadata:
            return self.evaluate_ek100_mir(model, device)
        if self.cfg.dataset != "synthetic" or self.opts.synthetic_eval_groups == 0:
            return None
        from lavila.data.synthetic import heldout_groups

        row = self.model_config()
        data = heldout_groups(self.opts.synthetic_eval_groups, seed=self.cfg.seed + 1000,
                              num_frames=self.cfg.clip_length, img_size=row.vision.img_size, tokenizer=self.tokenizer,
                              preprocess=row.preprocess, distractor_prob=self.opts.synthetic_distractor_prob)
        return grouped_retrieval(model, data, group_size=len(_heldout()), device=device)

    def evaluate_ek100_mir(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """The reference's end-of-epoch check: zero-shot EK-100 MIR at ``clip_length`` frames; score = avg mAP.

        Same protocol and code as ``lavila eval ek100_mir`` (:func:`lavila.eval.zeroshot.mir_zero_shot`), so the
        logged numbers are those of the saved checkpoint. Every rank takes part (clips sharded, result gathered).
        """
        from lavila.data.benchmarks import read_ek100_mir
        from lavila.eval.zeroshot import mir_zero_shot, restrict_mir

        if self._ek100_mir is None:
            sentences, relevancy = self.opts.ek100_mir_files()
            self._ek100_mir = restrict_mir(read_ek100_mir(self.opts.eval_ek100_mir_metadata, sentences, relevancy),
                                           self.opts.eval_limit)
        out = mir_zero_shot(model, self.tokenizer, self._ek100_mir, self.opts.eval_ek100_mir_root,
                            self.cfg.clip_length, device, batch_size=self.opts.eval_batch_size,
                            num_workers=self.cfg.workers, progress=self.cfg.progress)
        return {**out, "score": out["mAP_avg"]}


def _heldout() -> list[Any]:
    from lavila.data.synthetic import split_combos

    return split_combos("heldout")


# ---------------------------------------------------------------------------------------------------------------
# Retrieval metrics (text <-> video) on groups of clips with one distinct caption each
# ---------------------------------------------------------------------------------------------------------------


def retrieval_ranks(similarity: torch.Tensor) -> torch.Tensor:
    """1-based rank of the matching (diagonal) item in each row of a square similarity matrix."""
    diag = similarity.diagonal()[:, None]
    return (similarity > diag).sum(dim=1) + 1


def retrieval_metrics(similarity: torch.Tensor, prefix: str) -> dict[str, float]:
    ranks = retrieval_ranks(similarity).float()
    return {f"{prefix}_R@1": 100 * (ranks <= 1).float().mean().item(),
            f"{prefix}_R@5": 100 * (ranks <= 5).float().mean().item(),
            f"{prefix}_MedR": ranks.median().item()}


@torch.no_grad()
def embed_dataset(model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 48,
                  indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised (video, text) embeddings of `data` items, in order."""
    was_training = model.training
    model.eval()
    videos, texts = [], []
    order = list(range(len(data))) if indices is None else list(indices)  # type: ignore[arg-type]
    for start in range(0, len(order), batch_size):
        items = [as_item_dict(data[i]) for i in order[start:start + batch_size]]
        video = torch.stack([it["video"] for it in items]).to(device)
        text = torch.stack([it["text"] for it in items]).to(device)
        mask = torch.stack([it["attention_mask"] for it in items]).to(device) if "attention_mask" in items[0] else None
        videos.append(torch.nn.functional.normalize(model.encode_image(video).float(), dim=-1).cpu())
        texts.append(torch.nn.functional.normalize(model.encode_text(text, mask).float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(videos), torch.cat(texts)


def grouped_retrieval(model: nn.Module, data: Dataset, group_size: int, device: torch.device) -> dict[str, float]:
    """Mean over groups of R@1/R@5/median rank, text->video and video->text, plus ``score`` = mean R@1."""
    from lavila.train.state import seeded_rngs

    with seeded_rngs(0):  # the same clips every time, and the training RNG streams are left alone
        video, text = embed_dataset(model, data, device)
    groups = len(video) // group_size
    if groups == 0:
        raise ValueError(f"retrieval needs at least {group_size} clips, got {len(video)}")
    sums: dict[str, float] = {}
    for g in range(groups):
        sl = slice(g * group_size, (g + 1) * group_size)
        sim = text[sl] @ video[sl].T
        for k, v in {**retrieval_metrics(sim, "t2v"), **retrieval_metrics(sim.T, "v2t")}.items():
            sums[k] = sums.get(k, 0.0) + v / groups
    sums["score"] = (sums["t2v_R@1"] + sums["v2t_R@1"]) / 2
    return sums
