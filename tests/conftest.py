"""Session-wide settings: a compile cache shared by the test session (set before mirasc is imported)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("MIRASC_CACHE", os.path.join(tempfile.gettempdir(), "mirasc-test-cache"))
