"""The content hash that names a compiled module: spec text, options, backend and compiler version."""

from __future__ import annotations

import functools
import hashlib
import json

__version__ = "0.1.0"


@functools.cache
def compiler_fingerprint() -> str:
    """A hash of the compiler's own sources (the package's top-level modules and `.miras` files, the checker's
    subpackage, the templates, the grammar), so a cached module never outlives the code that generated it, even
    between releases. Read through importlib.resources, so it covers the installed package data too (a wheel
    keeps the templates and the grammar inside the package, a checkout beside it)."""
    from importlib import resources

    from .resources import resource_dir

    h = hashlib.sha256()
    package = resources.files("mirasc")
    top = sorted((f for f in package.iterdir() if f.is_file()), key=lambda f: f.name)
    checker = sorted((f for f in package.joinpath("check").iterdir() if f.is_file()), key=lambda f: f.name)
    for root in (top, checker, sorted(resource_dir("templates").iterdir()), sorted(resource_dir("grammar").iterdir())):
        for f in root:
            if f.name.endswith((".py", ".j2", ".lark", ".miras")):
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
