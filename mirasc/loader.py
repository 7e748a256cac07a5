"""`load`: a prebuilt name, a spec file, spec text or a Spec -> a checked `mirasc.spec.Spec`."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mirasc.check import check
from mirasc.parse import parse
from mirasc.sources import read_file, resolve
from mirasc.spec import Spec


def read_spec(path: str | os.PathLike) -> tuple[str, str]:
    """Read a spec file: (text, file name for messages). Oversized or non-UTF-8 files are located errors."""
    src = read_file(path)
    return src.text, src.file


def load_source(text: str, file: str, options: Mapping[str, str | float] | None = None) -> Spec:
    """Parse and check spec text that came from `file` (the name its errors carry)."""
    prog = parse(text, file)
    return check(prog, prog.text, file, options)


def spec_options(spec: Spec) -> dict[str, str | float]:
    """The options a Spec was loaded with, as far as they differ from its source's defaults: `option` choices
    and `param` overrides. Loading the spec's source with them gives the Spec back (checked: a Spec changed with
    dataclasses.replace no longer matches its source and is refused, so no cache entry is filed under the
    wrong text)."""
    try:
        base = load_source(spec.source, spec.file)
        opts: dict[str, str | float] = {k: v for k, v in spec.options if dict(base.options).get(k) != v}
        opts.update({k: v for k, v in spec.params if dict(base.params).get(k) != v})
    except Exception:  # the defaults do not check (an option's default branch is invalid): name every choice
        opts = {**dict(spec.options), **dict(spec.params)}
    if load_source(spec.source, spec.file, opts or None) != spec:
        raise ValueError(f"spec: this Spec ({spec.name}) is not what its source text gives with options {opts}; "
                         f"was it changed after loading? Load or compile its text instead")
    return opts


def load(path_or_text: str | bytes | os.PathLike | Spec,
         options: Mapping[str, str | float] | None = None) -> Spec:
    """Load a spec: a prebuilt name (`moneta`), a path (an existing file, or any name ending in `.miras`), spec
    text, or a Spec (returned as it is; with `options`, reloaded from its source with its own choices and
    `options` on top).

    Text is given the file name `<string>`; bytes are taken as UTF-8 spec text. `options` picks `option`
    values and overrides `param`s. Every problem raises a located `SpecError`; a single word that is neither a
    prebuilt name nor a file is one too, saying what was tried (see mirasc.sources).
    """
    if isinstance(path_or_text, Spec):
        if not options:
            return path_or_text
        merged = {**spec_options(path_or_text), **dict(options)}
        return load_source(path_or_text.source, path_or_text.file, merged)
    src = resolve(path_or_text)
    return load_source(src.text, src.file, options)


__all__ = ["load", "load_source", "read_spec", "spec_options"]
