"""Session-wide settings (set before mirasc is imported): a compile cache shared by the test session, NaN-poisoned
kernel outputs, the Triton interpreter where there is no GPU."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("MIRASC_CACHE", os.path.join(tempfile.gettempdir(), "mirasc-test-cache"))
# Outputs the Triton kernels must write in full start as NaN (mirasc.backends.triton.poisoned), so that an element
# no program writes fails its comparison with the reference.
os.environ.setdefault("MIRASC_POISON", "1")

# Triton kernels run under the interpreter where there is no GPU; it must be chosen before triton is imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a dependency
    pass
