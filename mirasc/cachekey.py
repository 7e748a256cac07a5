"""The content hash that names a compiled module: spec text, options, backend and compiler version."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def compiler_fingerprint() -> str:
    """A hash of the compiler's own sources (package, templates, grammar), so a cached module never outlives
    the code that generated it, even between releases."""
    here = Path(__file__).resolve().parent
    roots = [here, here.parent / "templates", here.parent / "grammar"]
    h = hashlib.sha256()
    for root in roots:
        if not root.is_dir():
            continue
        for f in sorted(root.iterdir()):
            if f.suffix in (".py", ".j2", ".lark", ".miras"):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def spec_hash(text: str, options: dict | None, backend: str) -> str:
    """The hash a generated module's header names: spec text, options, backend, compiler version."""
    payload = json.dumps({"text": text, "options": options or {}, "backend": backend, "version": __version__},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_key(text: str, options: dict | None, backend: str) -> str:
    """The name of a cached module: the spec hash plus the compiler's source fingerprint."""
    return hashlib.sha256((spec_hash(text, options, backend) + compiler_fingerprint()).encode()).hexdigest()
