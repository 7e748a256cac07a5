"""Parse `.miras` text into the frozen AST of `mirasc.ast` (grammar: `grammar/miras.lark`, LALR).

Every failure is a located `SpecError`; nothing in the text is ever evaluated.
"""

from __future__ import annotations

import collections
import functools
import math
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from mirasc import ast as A
from mirasc.errors import SpecError, source_line
from mirasc.spec import MAX_SPEC_BYTES, Span

MAX_BYTES = MAX_SPEC_BYTES
MAX_DEPTH = 64


_OPEN = "([{"
_CLOSE = ")]}"


def grammar_path() -> Path:
    """grammar/miras.lark in a checkout, else the installed `mirasc.grammar` package data."""
    from mirasc.resources import resource_dir

    return resource_dir("grammar") / "miras.lark"


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
    )


# ---------------------------------------------------------------------------------------------------------
# Pre-parse refusals
# ---------------------------------------------------------------------------------------------------------


def decode(data: bytes, file: str) -> str:
    """UTF-8 decode `data`, or a SpecError at the first offending byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        pos = e.start
        line_start = data.rfind(b"\n", 0, pos) + 1
        line = data.count(b"\n", 0, pos) + 1
        col = len(data[line_start:pos].decode("utf-8", errors="replace")) + 1
        line_end = data.find(b"\n", pos)
        shown = data[line_start : len(data) if line_end < 0 else line_end].decode("utf-8", errors="replace")
        shown = shown.removesuffix("\r")
        raise SpecError(file, line, col, f"the spec is not valid UTF-8 (byte 0x{data[pos]:02x})", shown) from None


def _check_size(text: str, file: str) -> None:
    if len(text) > MAX_BYTES or len(text.encode("utf-8", errors="surrogatepass")) > MAX_BYTES:
        n = len(text.encode("utf-8", errors="surrogatepass"))
        raise SpecError.at(file, text, 1, 1, f"spec is {n} bytes; the limit is {MAX_BYTES}")


def _check_depth(text: str, file: str) -> None:
    """Refuse bracket nesting deeper than MAX_DEPTH (comments skipped), at the offending bracket."""
    depth = 0
    line, col = 1, 1
    in_comment = False
    for ch in text:
        if ch == "\n":
            in_comment = False
            line, col = line + 1, 1
            continue
        if not in_comment:
            if ch == "#":
                in_comment = True
            elif ch in _OPEN:
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError.at(file, text, line, col, f"brackets are nested more than {MAX_DEPTH} deep")
            elif ch in _CLOSE:
                depth = max(0, depth - 1)
        col += 1


# ---------------------------------------------------------------------------------------------------------
# Tree -> AST
# ---------------------------------------------------------------------------------------------------------


def _number(text: str) -> float:
    # `text` matched NUMBER (digits, '.', exponent): float() of it is a plain numeric conversion, never code.
    try:
        return float(text)
    except (ValueError, OverflowError):
        return math.inf


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, file: str, text: str) -> None:
        super().__init__(visit_tokens=False)
        self.file = file
        self.text = text

    # helpers
    def _span(self, meta: Any) -> Span:
        if getattr(meta, "empty", True):
            return Span(self.file, 1, 1, 1, 1)
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> Span:
        return Span(self.file, tok.line or 1, tok.column or 1, tok.end_line or 0, tok.end_column or 0)

    def _name(self, tok: Token) -> A.Name:
        return A.Name(str(tok), self._tok(tok))

    # program
    def start(self, meta, ch):
        return A.Program(tuple(ch), self.file, self.text)

    # statements
    def model_stmt(self, meta, ch):
        return A.ModelStmt(self._name(ch[0]), self._span(meta))

    def memory_stmt(self, meta, ch):
        return A.MemoryStmt(self._name(ch[0]), ch[1], self._span(meta))

    def gate_stmt(self, meta, ch):
        return A.GateStmt(self._name(ch[0]), self._name(ch[1]), tuple(ch[2:]), self._span(meta))

    def gate_range(self, meta, ch):
        return A.GateAttr("range", ch[0], self._span(meta))

    def gate_activation(self, meta, ch):
        return A.GateAttr("activation", self._name(ch[0]), self._span(meta))

    def gate_init(self, meta, ch):
        return A.GateAttr("init", ch[0], self._span(meta))

    def gate_flag(self, meta, ch):
        return A.GateAttr("flag", self._name(ch[0]), self._span(meta))

    def param_stmt(self, meta, ch):
        return A.ParamStmt(self._name(ch[0]), ch[1], self._span(meta))

    def option_stmt(self, meta, ch):
        return A.OptionStmt(self._name(ch[0]), tuple(self._name(t) for t in ch[1:]), self._span(meta))

    def when_stmt(self, meta, ch):
        return A.WhenStmt(self._name(ch[0]), self._name(ch[1]), tuple(ch[2:]), self._span(meta))

    def let_stmt(self, meta, ch):
        return A.LetStmt(self._name(ch[0]), ch[1], self._span(meta))

    def def_stmt(self, meta, ch):
        return A.DefStmt(self._name(ch[0]), tuple(ch[1] or ()), ch[2], self._span(meta))

    def dparams(self, meta, ch):
        return list(ch)

    def dparam(self, meta, ch):
        return A.DefParam(self._name(ch[0]), ch[1], self._span(meta))

    def bias_stmt(self, meta, ch):
        text = ""
        if not getattr(meta, "empty", True):
            # the expression as written: the statement's text after the `bias` keyword
            text = self.text[meta.start_pos : meta.end_pos].removeprefix("bias").strip()
        return A.BiasStmt(ch[0], text, self._span(meta))

    def retention_stmt(self, meta, ch):
        return A.RetentionStmt(tuple(ch), self._span(meta))

    def rterm(self, meta, ch):
        return A.RetentionTerm(self._name(ch[0]), ch[1], self._span(meta))

    def algorithm_stmt(self, meta, ch):
        return A.AlgorithmStmt(self._name(ch[0]), ch[1], self._span(meta))

    def chunk_stmt(self, meta, ch):
        return A.ChunkStmt(ch[0], self._span(meta))

    def surrogate_stmt(self, meta, ch):
        return A.SurrogateStmt(self._name(ch[0]), self._name(ch[1]), ch[2], self._span(meta))

    # arguments
    def call_args(self, meta, ch):
        return tuple(ch[0] or ())

    def args(self, meta, ch):
        out = []
        for c in ch:
            out.append(c if isinstance(c, A.Arg) else A.Arg(None, c, c.span))
        return out

    def kwarg(self, meta, ch):
        return A.Arg(self._name(ch[0]), ch[1], self._span(meta))

    # intervals
    def _interval(self, meta, ch, lo_open, hi_open):
        return A.Interval(ch[0], ch[1], lo_open, hi_open, self._span(meta))

    def open_open(self, meta, ch):
        return self._interval(meta, ch, True, True)

    def open_closed(self, meta, ch):
        return self._interval(meta, ch, True, False)

    def closed_open(self, meta, ch):
        return self._interval(meta, ch, False, True)

    def closed_closed(self, meta, ch):
        return self._interval(meta, ch, False, False)

    def bound_num(self, meta, ch):
        return A.Bound(str(ch[0]), False, False, self._span(meta))

    def bound_name(self, meta, ch):
        return A.Bound(str(ch[0]), False, True, self._span(meta))

    def bound_negnum(self, meta, ch):
        return A.Bound(str(ch[0]), True, False, self._span(meta))

    def bound_negname(self, meta, ch):
        return A.Bound(str(ch[0]), True, True, self._span(meta))

    # expressions
    def compare(self, meta, ch):
        return A.ECompare(str(ch[1]), ch[0], ch[2], self._tok(ch[1]))

    def _bin(self, op, meta, ch):
        return A.EBin(op, ch[0], ch[1], self._span(meta))

    def add(self, meta, ch):
        return self._bin("+", meta, ch)

    def sub(self, meta, ch):
        return self._bin("-", meta, ch)

    def mul(self, meta, ch):
        return self._bin("*", meta, ch)

    def div(self, meta, ch):
        return self._bin("/", meta, ch)

    def pow(self, meta, ch):
        return self._bin("^", meta, ch)

    def neg(self, meta, ch):
        return A.ENeg(ch[0], self._span(meta))

    def num(self, meta, ch):
        return A.ENum(_number(str(ch[0])), str(ch[0]), self._tok(ch[0]))

    def name(self, meta, ch):
        return A.EName(str(ch[0]), self._tok(ch[0]))

    def call(self, meta, ch):
        return A.ECall(self._name(ch[0]), tuple(ch[1] or ()), self._span(meta))


# ---------------------------------------------------------------------------------------------------------
# Lark errors -> SpecError
# ---------------------------------------------------------------------------------------------------------

_TERMINAL_WORDS = {"NAME": "a name", "NUMBER": "a number", "COMPOP": "a comparison", "$END": "the end of the spec"}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    for t in _parser().terminals:
        if t.name == name and t.pattern.type == "str":
            return f"`{t.pattern.value}`"
    return name.lower()


def _expected(names: Any, text: str = "", pos: int = 0) -> str:
    names = set(names)
    if "RBRACE" in names and text[:pos].count("{") <= text[:pos].count("}"):
        names.discard("RBRACE")  # no `when` block is open here
    words = sorted({_describe_terminal(n) for n in names}, key=lambda w: (not w.startswith("`"), w))
    if not words:
        return ""
    if len(words) == 1:
        return f"expected {words[0]}"
    return "expected one of " + ", ".join(words)


def _end_position(text: str) -> tuple[int, int]:
    """Where the spec's last token ends (1:1 for an empty spec)."""
    last = None
    try:
        tail = collections.deque(_parser().lex(text), maxlen=1)
        last = tail[0] if tail else None
    except UnexpectedInput:
        last = None
    if last is None:
        return 1, 1
    return last.end_line or 1, last.end_column or 1


def _char_name(ch: str) -> str:
    if ch.isprintable() and ch not in "`":
        return f"`{ch}`"
    return f"U+{ord(ch):04X}"


def _convert(e: UnexpectedInput, text: str, file: str) -> SpecError:
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else "?"
        return SpecError.at(file, text, e.line, e.column, f"unexpected character {_char_name(ch)}")
    if isinstance(e, UnexpectedToken):
        tok = e.token
        pos = len(text) if tok.type == "$END" else (tok.start_pos or 0)
        exp = _expected(e.expected, text, pos)
        if tok.type == "$END":
            line, col = _end_position(text)
            found = "the end of the spec"
        else:
            line, col = tok.line or 1, tok.column or 1
            found = f"`{tok}`"
        msg = f"{exp}, found {found}" if exp else f"unexpected {found}"
        return SpecError.at(file, text, line, col, msg)
    if isinstance(e, UnexpectedEOF):
        line, col = _end_position(text)
        exp = _expected(e.expected, text, len(text))
        return SpecError.at(file, text, line, col, f"{exp}, found the end of the spec" if exp else "unexpected end")
    return SpecError.at(file, text, getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1, "syntax error")


def parse(text: str | bytes, file: str = "<string>") -> A.Program:
    """Parse spec text (or UTF-8 bytes) into a `mirasc.ast.Program`; raise a located SpecError on failure."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_BYTES:
            shown = bytes(text[:_SHOWN_PREFIX]).split(b"\n", 1)[0].decode("utf-8", errors="replace")
            raise SpecError(file, 1, 1, f"spec is {len(text)} bytes; the limit is {MAX_BYTES}", shown)
        text = decode(bytes(text), file)
    if not isinstance(text, str):
        raise TypeError(f"parse() takes str or bytes, not {type(text).__name__}")
    _check_size(text, file)
    _check_depth(text, file)
    try:
        tree = _parser().parse(text)
        return _ToAst(file, text).transform(tree)
    except UnexpectedInput as e:
        raise _convert(e, text, file) from None
    except RecursionError:
        raise SpecError.at(file, text, 1, 1, "the spec's expressions are too large or nested too deeply") from None
    except VisitError as e:
        if isinstance(e.orig_exc, RecursionError):
            raise SpecError.at(file, text, 1, 1, "the spec's expressions are too large or nested too deeply") from None
        raise


_SHOWN_PREFIX = 4096

__all__ = ["MAX_BYTES", "MAX_DEPTH", "decode", "parse", "source_line"]
