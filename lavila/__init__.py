"""LaViLa: learning video representations from large language models, on modern PyTorch."""

import os as _os

# Same seed, same machine, same numbers: MKL's fastest GEMM kernels may take paths that depend on a buffer's memory
# alignment, which differs from one process to the next (heap layout, the tuned allocator of lavila.malloc), so
# two runs of one training drift apart after a few steps. MKL's strict conditional-numerical-reproducibility mode
# keeps the CPU's own code path but makes the result independent of alignment (same thread count needed). It must
# be set before MKL's first call; a value the user set wins. docs/training.md, "Reproducibility".
_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
