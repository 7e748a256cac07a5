"""Session-wide settings: a compile cache shared by the test session (set before mirasc is imported)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("MIRASC_CACHE", os.path.join(tempfile.gettempdir(), "mirasc-test-cache"))

# Triton kernels run under the interpreter where there is no GPU; it must be chosen before triton is imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a dependency
    pass
