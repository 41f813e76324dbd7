"""Models: every registry row built, loaded and saved by one factory (``from lavila.models import create_model``)."""

from lavila.models.config import ModelConfig, PreprocessConfig, TextConfig, TokenizerConfig, VisionConfig
from lavila.models.factory import (
    build_model,
    create_model,
    create_model_and_transforms,
    from_pretrained,
    get_tokenizer,
    load_checkpoint,
    model_transforms,
    save_pretrained,
    tokenizer_for,
)
from lavila.models.registry import MODEL_CONFIGS, get_config

__all__ = [
    "MODEL_CONFIGS",
    "ModelConfig",
    "PreprocessConfig",
    "TextConfig",
    "TokenizerConfig",
    "VisionConfig",
    "build_model",
    "create_model",
    "create_model_and_transforms",
    "from_pretrained",
    "get_config",
    "get_tokenizer",
    "load_checkpoint",
    "model_transforms",
    "save_pretrained",
    "tokenizer_for",
]
