"""The content hash that names a compiled module: spec text, options, backend and compiler version."""

from __future__ import annotations

import functools
import hashlib
import json

__version__ = "0.1.0"


@functools.cache
def compiler_fingerprint() -> str:
    """A hash of the compiler's own sources (the package's top-level modules and `.miras` files, the checker's and
    the components' subpackages, the templates, the grammar), so a cached module never outlives the code that
    generated it, even between releases. Read through importlib.resources, so it covers the installed package data
    too (a wheel keeps the templates and the grammar inside the package, a checkout beside it)."""
    from importlib import resources

    from .resources import resource_dir

    h = hashlib.sha256()
    package = resources.files("mirasc")
    top = sorted((f for f in package.iterdir() if f.is_file()), key=lambda f: f.name)
    subpackages = [_files(package.joinpath(*sub.split("/"))) for sub in ("check", "components", "components/maps")]
    for root in (top, *subpackages, sorted(resource_dir("templates").iterdir()),
                 sorted(resource_dir("grammar").iterdir())):
        for f in root:
            if f.name.endswith((".py", ".j2", ".lark", ".miras")):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _files(folder) -> list:
    return sorted((f for f in folder.iterdir() if f.is_file()), key=lambda f: f.name)


def registered_fingerprint() -> str:
    """A hash of the sources of the components registered from outside the package (a user's module, a test):
    a cached module never outlives an edit to a map it was generated with, nor a map registered under the same
    keyword by other code."""
    import inspect

    from .components import registered_outside

    h = hashlib.sha256()
    for key, cls in sorted(registered_outside().items()):
        h.update(key.encode() + cls.__module__.encode() + inspect.getsource(cls).encode())
    return h.hexdigest()[:16]


def spec_hash(text: str, options: dict | None, backend: str) -> str:
    """The hash a generated module's header names: spec text, options, backend, compiler version."""
    payload = json.dumps({"text": text, "options": options or {}, "backend": backend, "version": __version__},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_key(text: str, options: dict | None, backend: str) -> str:
    """The name of a cached module: the spec hash plus the compiler's source fingerprint (and that of any component
    registered from outside the package)."""
    key = spec_hash(text, options, backend) + compiler_fingerprint() + registered_fingerprint()
    return hashlib.sha256(key.encode()).hexdigest()
