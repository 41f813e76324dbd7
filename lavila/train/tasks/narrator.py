"""The narrator (VCLM) training task for the shared loop (``lavila train configs/narrator_*.yaml``).

Reference recipe (spec §8.2): GPT-2 weights + the stage-1 dual encoder's *visual* tower, LM and visual tower
frozen (only the pooler, queries and gated cross-attention train), CaptionLoss, fp32 (``disable_amp``), grad-norm
clip 1.0, constant lr 3e-5. Two reference chores are done here instead of by hand:

* ``resume`` pointing at a dual-encoder checkpoint (no ``img_queries`` in it) is treated as an initialisation:
  only ``visual.*`` is loaded (``module.`` stripped, frames adapted) and its ``epoch``/``optimizer``/``scaler`` are
  ignored, so the run does not believe it is resuming. (The reference required deleting those keys first.)
  Auto-resume from ``output_dir/checkpoint.pt`` still wins.
* the validation set is the training metadata with ``train`` -> ``val`` when that file exists, else none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from lavila.config import ConfigError, Where, option
from lavila.data.metadata import val_metadata_path
from lavila.train.config import TrainConfig
from lavila.train.tasks import Task


@dataclass
class NarratorConfig(TrainConfig):
    """``lavila train`` keys of narrator (VCLM) training, on top of TrainConfig."""

    gated_xattn: bool = option(True, "tanh-gated cross-attention (on for every released narrator)")
    freeze_lm_vclm: bool = option(True, "freeze GPT-2 except the cross-attention parts")
    freeze_visual_vclm: bool = option(True, "freeze the spatial part of the video tower")
    freeze_visual_vclm_temporal: bool = option(True, "freeze the temporal part of the video tower")
    random_init_gpt2: bool = option(False, "do not load pretrained GPT-2 weights (tests, tiny models)")
    gpt2_weights: str = option("", "pretrained GPT-2: HF hub name or local folder (default: the model's hf_name)")
    tokenizer: str = option("", "GPT-2 tokenizer: HF name, local folder, or a tokenizers .json file "
                            "(default: the model's GPT-2)")
    video_chunk_len: int = option(300, "seconds per video chunk; -1 = <root>/<uid>.mp4 whole videos")
    video_fps: float = option(30, "frame rate of the chunks; -1 = read from each file")
    max_decode_failures: float = option(0.05, "abort if more than this fraction of clips fail to decode", min=0)

    def validate(self, where: Where) -> None:
        super().validate(where)
        if self.dataset != "ego4d":
            raise ConfigError(f"{where('dataset')}: the narrator task reads 'ego4d'-style metadata + videos, "
                              f"got {self.dataset!r}")


def is_narrator_state_dict(state_dict: dict[str, Any]) -> bool:
    return any(k.endswith("img_queries") for k in state_dict)


class NarratorTask(Task):
    Config = NarratorConfig
    opts: NarratorConfig

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        self._tokenizer: Any = None
        auto = Path(cfg.output_dir) / "checkpoint.pt"
        if cfg.resume and not auto.is_file():
            from lavila.models.checkpoint import read_checkpoint

            ckpt = read_checkpoint(cfg.resume, trust=cfg.trust_checkpoint)
            if not is_narrator_state_dict(ckpt.get("state_dict", {})):
                print(f"=> {cfg.resume} is not a narrator checkpoint: loading only its visual tower, ignoring its "
                      "epoch/optimizer/scaler (stage-1 initialisation)")
                cfg.init_from, cfg.resume = cfg.resume, ""
        elif not cfg.resume and not cfg.init_from and not auto.is_file():
            print("warning: neither resume nor init_from is set: the narrator's video tower stays random (the "
                  "recipe starts from a stage-1 dual-encoder checkpoint)")

    # --- text ---------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The row's GPT-2 tokenizer (``tokenizer``: a folder, or a tokenizers ``.json`` for custom vocabularies)."""
        if self._tokenizer is None:
            from lavila.models import get_tokenizer

            self._tokenizer = get_tokenizer(self.model_config(), self.opts.tokenizer or None)
        return self._tokenizer

    # --- model --------------------------------------------------------------------------------------------------
    def model_config(self) -> Any:
        from lavila.models.registry import get_config

        kw: dict[str, Any] = {"num_frames": self.cfg.clip_length, "gated_xattn": self.opts.gated_xattn}
        if self.opts.gpt2_weights:
            kw["text_hf_name"] = self.opts.gpt2_weights
        kw.update(self.cfg.model_overrides)
        return get_config(self.cfg.model, **kw)

    def build_model(self) -> nn.Module:
        """The factory's VCLM with the recipe's freezing; GPT-2 weights are the pretrained ones unless asked not."""
        from lavila.models import build_model

        cfg = self.model_config()
        if cfg.kind != "vclm":
            raise ConfigError(f"key 'model': the narrator task trains VCLM models, {cfg.name} is a {cfg.kind}")
        return build_model(
            cfg, pretrained=not self.opts.random_init_gpt2, freeze_lm=self.opts.freeze_lm_vclm,
            freeze_visual=self.opts.freeze_visual_vclm, freeze_visual_temporal=self.opts.freeze_visual_vclm_temporal,
            use_checkpoint=self.cfg.use_checkpoint,
        )

    def build_criterion(self) -> nn.Module:
        from lavila.models.losses import CaptionLoss

        return CaptionLoss(pad_id=0)

    def load_weights(self, model: nn.Module, state_dict: dict[str, Any], strict: bool) -> list[str]:
        """Narrator checkpoints load as they are; a dual encoder's contributes its ``visual.*`` only."""
        from lavila.models.checkpoint import load_state_dict_into, strip_prefix

        sd = strip_prefix(state_dict)
        if is_narrator_state_dict(sd):
            return load_state_dict_into(model, sd, strict=strict)
        visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
        if not visual:
            raise ValueError("checkpoint has neither narrator keys (img_queries) nor a visual tower (visual.*)")
        missing = load_state_dict_into(model, visual, strict=False)
        not_loaded = [k for k in missing if k.startswith("visual.")]
        if not_loaded:
            raise ValueError(f"the checkpoint's visual tower lacks {len(not_loaded)} keys of this model's "
                             f"(first: {not_loaded[:5]}); is it the right backbone?")
        print(f"=> loaded {len(visual)} visual tensors from a dual-encoder checkpoint")
        return missing

    # --- data ---------------------------------------------------------------------------------------------------
    def _dataset(self, metadata: str, is_training: bool) -> Dataset:
        from lavila.data.datasets import Ego4DClipDataset
        from lavila.data.robust import DecodeFailures, ResilientDataset
        from lavila.models import model_transforms

        train, evaluation = model_transforms(self.model_config())
        transform = train if is_training else evaluation
        data = Ego4DClipDataset(self.cfg.root, metadata, transform=transform, tokenizer=self.tokenizer,
                                clip_length=self.cfg.clip_length, is_training=is_training,
                                chunk_len=self.opts.video_chunk_len, fps=self.opts.video_fps, seed=self.cfg.seed)
        return ResilientDataset(data, DecodeFailures(max_failure_rate=self.opts.max_decode_failures))

    def build_train_dataset(self) -> Dataset:
        return self._dataset(self.cfg.metadata, is_training=True)

    def build_val_dataset(self) -> Dataset | None:
        val = val_metadata_path(self.cfg.metadata)
        if val == self.cfg.metadata or not Path(val).is_file():
            print(f"no validation metadata at {val}: skipping the validation loss")
            return None
        return self._dataset(val, is_training=False)

    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        # items: (frames, ids, relevancy) from Ego4DClipDataset with a GPT-2 tokenizer
        return default_collate([{"video": it[0], "text": it[1]} for it in items])

    # --- step ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, criterion: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(batch["video"], batch["text"])
        return criterion({k: (v.float() if v.is_floating_point() else v) for k, v in out.items()})
