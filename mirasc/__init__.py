"""mirasc: compile `.miras` specs of Miras test-time memories into chunkwise kernels.

    spec = mirasc.load("moneta")                       # parse and check (SpecError on bad input)
    op = mirasc.compile("moneta")                      # a MemoryOp, cached by content hash
    o, state = op(q, k, v, gates={...}, output_final_state=True)

A spec argument is a prebuilt name (`moneta`, `yaad`, ...: see `mirasc.prebuilt_names()`), a path, spec text, or
a Spec; a single word that is none of the first three is a SpecError saying what was tried (mirasc.sources).

Heavy dependencies (lark, sympy, jinja2) load only when a spec has to be parsed or compiled.
"""

from __future__ import annotations

from .cachekey import __version__
from .errors import SpecError
from .spec import Spec


def load(path_or_text, options=None) -> Spec:
    """Parse and check a spec (a prebuilt name, a path, spec text or a Spec); raises SpecError with file, line
    and column. `options` picks `option` values and overrides `param`s (on top of a Spec's own)."""
    from .loader import load as _load

    return _load(path_or_text, options)


def compile(spec_or_path, backend: str = "auto", options=None):  # noqa: A001 - the public name
    """Compile a spec (a prebuilt name, a path, spec text or a Spec, whose options are kept) to a MemoryOp
    (see mirasc.runtime.compile and MemoryOp)."""
    from .runtime import compile as _compile

    return _compile(spec_or_path, backend=backend, options=options)


def prebuilt_names() -> list[str]:
    """The names of the prebuilt specs shipped with the package (`moneta`, `yaad`, `memora`, ...)."""
    from .resources import prebuilt_names as _names

    return _names()


__all__ = ["Spec", "SpecError", "__version__", "compile", "load", "prebuilt_names"]
