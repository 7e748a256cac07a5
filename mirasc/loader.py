"""`load`: a spec file or spec text -> a checked `mirasc.spec.Spec`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mirasc.check import check
from mirasc.errors import SpecError
from mirasc.parse import MAX_BYTES, decode, parse
from mirasc.spec import Spec


def _is_path(arg: str) -> bool:
    if arg.endswith(".miras"):
        return True
    if "\n" in arg or "\0" in arg or len(arg) > 4096:
        return False
    try:
        return os.path.isfile(arg)
    except (OSError, ValueError):
        return False


def read_spec(path: str | os.PathLike) -> tuple[str, str]:
    """Read a spec file: (text, file name for messages). Oversized or non-UTF-8 files are located errors."""
    file = os.fspath(path)
    if isinstance(file, bytes):
        file = os.fsdecode(file)
    try:
        size = os.path.getsize(file)
        if size > MAX_BYTES:
            with open(file, "rb") as f:
                head = f.read(4096).split(b"\n", 1)[0].decode("utf-8", errors="replace")
            raise SpecError(file, 1, 1, f"spec is {size} bytes; the limit is {MAX_BYTES}", head)
        data = Path(file).read_bytes()
    except OSError as e:
        raise SpecError(file, 1, 1, f"cannot read the spec: {e.strerror or e}", "") from None
    return decode(data, file), file


def load(path_or_text: str | bytes | os.PathLike, options: Mapping[str, str | float] | None = None) -> Spec:
    """Load a spec from a path (an existing file, or any name ending in `.miras`) or from spec text.

    Text is given the file name `<string>`; bytes are taken as UTF-8 spec text. `options` picks `option`
    values and overrides `param`s. Every problem raises a located `SpecError`.
    """
    if isinstance(path_or_text, (bytes, bytearray)):
        text, file = bytes(path_or_text), "<string>"
    elif isinstance(path_or_text, os.PathLike) or (isinstance(path_or_text, str) and _is_path(path_or_text)):
        text, file = read_spec(path_or_text)
    elif isinstance(path_or_text, str):
        text, file = path_or_text, "<string>"
    else:
        raise TypeError(f"load() takes a path or spec text, not {type(path_or_text).__name__}")
    prog = parse(text, file)
    return check(prog, prog.text, file, options)


__all__ = ["load", "read_spec"]
