"""LaViLa: learning video representations from large language models, on modern PyTorch."""

__version__ = "0.1.0"
