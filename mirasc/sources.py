"""What a spec argument names: a prebuilt spec, a file, or spec text (`mirasc.load`, `mirasc.compile`, the CLI).

A string is read as
  1. a prebuilt name (`moneta`, `yaad`, ...: a packaged spec; see `mirasc.resources.prebuilt_names`),
  2. a path: any string ending in `.miras`, or naming an existing file,
  3. spec text: anything else that is not a single word.
A single word that is none of these (`monet`, `models/x`) is an error that says what was tried, and so is a
prebuilt name that is also a file in the current folder (write `./moneta` for the file). bytes are spec text
(UTF-8), an `os.PathLike` is always a path. This module reads files but imports neither lark nor sympy, so a
cached compile stays light.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError
from .resources import prebuilt_names, prebuilt_path
from .spec import MAX_SPEC_BYTES

STRING = "<string>"
# Statements need a space between keyword and name (`memory linear`), so no spec is a single word.
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class SpecSource:
    text: str
    file: str          # a path, or "<string>" for text
    kind: str          # "prebuilt", "path" or "text"


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        from .parse import decode  # the located error (imports lark; only on bad input)

        return decode(data, file)


def read_file(path: str | os.PathLike) -> SpecSource:
    """A spec file's text; unreadable, oversized or non-UTF-8 files are located SpecErrors naming the file."""
    file = os.fsdecode(os.fspath(path))
    try:
        size = os.path.getsize(file)
        if size > MAX_SPEC_BYTES:
            with open(file, "rb") as f:
                head = f.read(4096).split(b"\n", 1)[0].decode("utf-8", errors="replace")
            raise SpecError(file, 1, 1, f"spec is {size} bytes; the limit is {MAX_SPEC_BYTES}", head)
        data = Path(file).read_bytes()
    except OSError as e:
        raise SpecError(file, 1, 1, f"cannot read the spec: {e.strerror or e}", "") from None
    return SpecSource(_decode(data, file), file, "path")


def _is_file(s: str) -> bool:
    if "\0" in s or len(s) > 4096:
        return False
    try:
        return os.path.isfile(s)
    except (OSError, ValueError):
        return False


def resolve(arg: str | bytes | os.PathLike) -> SpecSource:
    """The text and file name of a prebuilt name, a path or spec text (see the module docstring)."""
    if isinstance(arg, (bytes, bytearray)):
        return SpecSource(_decode(bytes(arg), STRING), STRING, "text")
    if isinstance(arg, os.PathLike):
        return read_file(arg)
    if not isinstance(arg, str):
        raise TypeError(f"spec: expected a prebuilt name, a path, spec text or a Spec, not {type(arg).__name__}")
    single_line = "\n" not in arg and "\r" not in arg
    prebuilt = prebuilt_path(arg) if single_line else None
    if prebuilt is not None:
        if _is_file(arg):
            raise SpecError(STRING, 1, 1, f"{arg!r} is both the prebuilt spec {arg!r} and the file "
                                          f"{os.path.abspath(arg)}; write ./{arg} (or pass a pathlib.Path) for the "
                                          f"file, or run from another folder for the prebuilt spec", arg)
        return SpecSource(read_file(prebuilt).text, str(prebuilt), "prebuilt")
    if single_line and (arg.endswith(".miras") or _is_file(arg)):
        return read_file(arg)
    if single_line and _WORD.fullmatch(arg):
        names = prebuilt_names()
        close = difflib.get_close_matches(arg, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SpecError(STRING, 1, 1, f"{arg!r} is not a prebuilt spec ({', '.join(names)}), not a file "
                                      f"(no such file: {os.path.abspath(arg)}) and not spec text{hint}", arg)
    return SpecSource(arg, STRING, "text")


__all__ = ["STRING", "SpecSource", "read_file", "resolve"]
