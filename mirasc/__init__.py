"""mirasc: compile `.miras` specs of Miras test-time memories into chunkwise kernels.

    spec = mirasc.load("models/moneta.miras")          # parse and check (SpecError on bad input)
    op = mirasc.compile("models/moneta.miras")         # a MemoryOp, cached by content hash
    o, state = op(q, k, v, gates={...}, output_final_state=True)

Heavy dependencies (lark, sympy, jinja2) load only when a spec has to be parsed or compiled.
"""

from __future__ import annotations

from .cachekey import __version__
from .errors import SpecError
from .spec import Spec


def load(path_or_text, options=None) -> Spec:
    """Parse and check a spec (a path or spec text); raises SpecError with file, line and column."""
    from .loader import load as _load

    return _load(path_or_text, options)


def compile(spec_or_path, backend: str = "auto", options=None):  # noqa: A001 - the public name
    """Compile a spec to a MemoryOp (see mirasc.runtime.MemoryOp)."""
    from .runtime import compile as _compile

    return _compile(spec_or_path, backend=backend, options=options)


__all__ = ["Spec", "SpecError", "__version__", "compile", "load"]
