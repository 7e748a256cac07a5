"""The content hash that names a compiled module: spec text, options, backend and compiler version."""

from __future__ import annotations

import hashlib
import json

__version__ = "0.1.0"


def spec_hash(text: str, options: dict | None, backend: str) -> str:
    payload = json.dumps({"text": text, "options": options or {}, "backend": backend, "version": __version__},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
