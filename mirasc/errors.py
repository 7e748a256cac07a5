"""Located errors for the `.miras` front end.

Every problem with a spec is reported as a `SpecError`:

    FILE:LINE:COL: error: MESSAGE
    the source line (tabs kept)
         ^
"""

from __future__ import annotations

from typing import Any

# Lines longer than this are shown as a window around the column (the caret stays aligned).
_MAX_SHOWN = 240


def source_line(text: str, line: int) -> str:
    """The 1-based `line` of `text` without its line terminator ('' when out of range)."""
    if line < 1:
        return ""
    start = 0
    for _ in range(line - 1):
        nl = text.find("\n", start)
        if nl < 0:
            return ""
        start = nl + 1
    end = text.find("\n", start)
    s = text[start:] if end < 0 else text[start:end]
    return s.removesuffix("\r")


class SpecError(Exception):
    """A problem with a spec, located at `file:line:col` (1-based)."""

    def __init__(self, file: str, line: int, col: int, message: str, source_line: str = "") -> None:
        self.file = file
        self.line = max(1, int(line))
        self.col = max(1, int(col))
        self.message = message
        self.source_line = source_line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        shown, col = self.source_line, self.col
        if len(shown) > _MAX_SHOWN:  # a window of the line around the column
            start = max(0, min(col - 1 - _MAX_SHOWN // 2, len(shown) - _MAX_SHOWN))
            shown, col = shown[start : start + _MAX_SHOWN], col - start
        return f"{self.file}:{self.line}:{self.col}: error: {self.message}\n{shown}\n{' ' * (col - 1)}^"

    def __reduce__(self) -> tuple[Any, ...]:
        return (SpecError, (self.file, self.line, self.col, self.message, self.source_line))

    @classmethod
    def at(cls, file: str, text: str, line: int, col: int, message: str) -> SpecError:
        """An error at `line:col` of `text` (the spec's source), quoting that line."""
        return cls(file, line, col, message, source_line(text, line))

    @classmethod
    def from_span(cls, span: Any, text: str, message: str) -> SpecError:
        """An error at the start of `span` (a `mirasc.spec.Span`) in `text`."""
        return cls.at(span.file, text, span.line, span.col, message)
