"""What every part of the checker shares: the spec's text (for located errors), its declared names, and the
readers of constants, intervals and arguments.

Every problem is a `SpecError` at the offending token; a constant is folded by `arith`, the one place spec
arithmetic is evaluated (numbers only: nothing in a spec is ever evaluated as code).
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from mirasc import ast as A
from mirasc.components.base import MemoryArchitecture
from mirasc.errors import SpecError
from mirasc.parse import _number, parse
from mirasc.resources import resource_file
from mirasc.spec import ELEMENTWISE_FUNCTIONS, REDUCTIONS, Gate, Span

STDLIB_FILE = "<stdlib>"

ARITY = {
    **{f: 1 for f in ("abs", "sign", "sqrt", "exp", "log", "tanh", "sigmoid", "softplus")},
    "pow": 2,
    "min": 2,
    "max": 2,
    "where": 3,
    "sum": 1,
    "norm2": 1,
}
assert set(ARITY) == set(ELEMENTWISE_FUNCTIONS) | set(REDUCTIONS) | {"where"}

VARIABLES = ("y", "v", "r")
GATE_KINDS = ("scalar", "channel")
GATE_ACTIVATIONS = ("sigmoid", "softplus", "exp", "identity", "tanh")
GATE_FLAGS = ("static", "data_dependent")


def retention_terms() -> tuple[str, ...]:
    """`decay`, every registered boundary map (mirasc.components), `none`."""
    from mirasc.components import boundary_maps

    return ("decay", *boundary_maps(), "none")
SURROGATE_FORMS = {"abs": ("exact", "sqrt", "logcosh"), "sign": ("exact", "tanh")}
RESERVED = frozenset(VARIABLES) | {"inf", "nan", "true", "false"} | frozenset(ARITY)

SCALAR, CHANNEL = "scalar", "channel"
MAX_NODES = 10000


def fmt_num(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


def fmt_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{fmt_num(low)}, {fmt_num(high)}{')' if high_open else ']'}"


def quote_list(items: Iterable[str]) -> str:
    return ", ".join(f"`{i}`" for i in items)


def suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.5)
    return f"; did you mean `{close[0]}`?" if close else ""


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool
    high_open: bool

    def __str__(self) -> str:
        return fmt_range(self.low, self.high, self.low_open, self.high_open)

    def holds(self, low: float, high: float, low_open: bool = False, high_open: bool = False) -> bool:
        """Whether the interval (low, high) with the given openness lies inside this one."""
        lo_ok = low > self.low or (low == self.low and (not self.low_open or low_open))
        hi_ok = high < self.high or (high == self.high and (not self.high_open or high_open))
        return lo_ok and hi_ok


@functools.lru_cache(maxsize=1)
def stdlib() -> tuple[str, dict[str, A.DefStmt]]:
    text = resource_file("stdlib.miras").read_text(encoding="utf-8")  # a real file, even when mirasc is zipped
    prog = parse(text, STDLIB_FILE)
    defs: dict[str, A.DefStmt] = {}
    for st in prog.stmts:
        if not isinstance(st, A.DefStmt):  # pragma: no cover - the stdlib holds only defs
            raise SpecError.from_span(st.span, text, "the standard library may only contain `def` statements")
        defs[st.name.value] = st
    return text, defs


def stdlib_defs() -> dict[str, A.DefStmt]:
    """The standard library's `def`s by name (parsed once)."""
    return dict(stdlib()[1])


def arith(op: str, a: float, b: float) -> float:
    """a op b for the spec's arithmetic (+ - * / ^); NaN where it has no real value (0 ^ -1, (-8) ^ 0.5, 1 / 0)."""
    try:
        out = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
               "^": lambda: a**b}[op]()
    except (ZeroDivisionError, OverflowError, ValueError):
        return math.nan
    return float(out) if isinstance(out, (int, float)) else math.nan


class Context:
    """A spec being checked: its text and file, the options asked for, and the names declared so far."""

    def __init__(self, text: str, file: str, options: Mapping[str, str | float] | None) -> None:
        self.text = text
        self.file = file
        self.user_options = dict(options or {})
        self.std_text, self.std_defs = stdlib()
        self.gates: dict[str, Gate] = {}
        self.params: dict[str, float] = {}
        self.lets: dict[str, A.LetStmt] = {}
        self.defs: dict[str, A.DefStmt] = {}
        self.gate_roles: dict[str, list[str]] = {}  # the gates used so far, with what each is used as
        self.memory: MemoryArchitecture | None = None
        self.algorithm_spans: dict[str, Span] = {}  # where each argument of the algorithm was written

    def use_gate(self, name: str, role: str) -> None:
        roles = self.gate_roles.setdefault(name, [])
        if role not in roles:
            roles.append(role)

    def err(self, span: Span, message: str) -> NoReturn:
        if span.file == STDLIB_FILE:
            raise SpecError.from_span(span, self.std_text, message)
        if span.line < 1:
            span = Span(self.file, 1, 1)
        raise SpecError.from_span(span, self.text, message)

    def require(self, singles: dict[str, A.Stmt], kw: str) -> None:
        if kw not in singles:
            self.err(Span(self.file, 1, 1), f"missing `{kw}` statement (every spec needs one)")

    def number(self, e: A.ENum) -> float:
        if not math.isfinite(e.value):
            self.err(e.span, f"number `{e.text}` is out of range")
        return e.value

    def const(self, e: A.AExpr, what: str) -> float:
        """A constant expression: numbers, params, + - * / ^ and negation (evaluated numerically)."""
        if isinstance(e, A.ENum):
            return self.number(e)
        if isinstance(e, A.EName):
            if e.name in self.params:
                return self.params[e.name]
            if e.name in self.gates:
                self.err(e.span, f"{what} must be a number, not the gate `{e.name}`")
            self.err(e.span, f"{what} must be a number; `{e.name}` is not a param" + suggest(e.name, self.params))
        if isinstance(e, A.ENeg):
            return -self.const(e.arg, what)
        if isinstance(e, A.EBin):
            out = arith(e.op, self.const(e.lhs, what), self.const(e.rhs, what))
            if not math.isfinite(out):
                self.err(e.span, f"{what} is not a finite number")
            return out
        self.err(e.span, f"{what} must be a number")

    def const_arg(self, a: A.Arg, what: str, positive: bool = True, at_least: float | None = None) -> float:
        x = self.const(a.value, what)
        if at_least is not None and x < at_least:
            self.err(a.value.span, f"{what} must be ≥ {fmt_num(at_least)}, got {fmt_num(x)}")
        if positive and not x > 0:
            self.err(a.value.span, f"{what} must be > 0, got {fmt_num(x)}")
        return x

    def int_arg(self, a: A.Arg, lo: int, hi: int, what: str) -> int:
        x = self.const(a.value, what)
        if x != int(x) or not lo <= x <= hi:
            self.err(a.value.span, f"{what} must be an integer in [{lo}, {hi}], got {fmt_num(x)}")
        return int(x)

    def word(self, a: A.Arg, allowed: tuple[str, ...], what: str) -> str:
        e = a.value
        if not isinstance(e, A.EName) or e.name not in allowed:
            got = f"`{e.name}`" if isinstance(e, A.EName) else "that"
            hint = suggest(e.name, allowed) if isinstance(e, A.EName) else ""
            self.err(e.span, f"{what} must be one of {quote_list(allowed)}, not {got}{hint}")
        return e.name

    def read_params(self, stmts: list[A.ParamStmt]) -> None:
        for st in stmts:
            name = st.name.value
            value = self.const(st.value, f"param `{name}`")
            if name in self.user_options:
                raw = self.user_options[name]
                try:
                    if isinstance(raw, bool):
                        raise TypeError(raw)
                    value = float(raw)  # a number or numeric text; never evaluated
                except (TypeError, ValueError, OverflowError):
                    self.err(st.name.span, f"param `{name}` must be overridden with a number, not {raw!r}")
                if not math.isfinite(value):
                    self.err(st.name.span, f"param `{name}` must be finite, not {raw!r}")
            self.params[name] = value

    def bound(self, b: A.Bound) -> float:
        if b.is_name:
            if b.text != "inf":
                self.err(b.span, f"an interval bound must be a number or `inf`, not `{b.text}`")
            x = math.inf
        else:
            x = _number(b.text)
            if not math.isfinite(x):
                self.err(b.span, f"number `{b.text}` is out of range")
        return -x if b.negative else x

    def interval(self, iv: A.Interval) -> Range:
        low, high = self.bound(iv.low), self.bound(iv.high)
        if math.isinf(low) and not iv.low_open:
            self.err(iv.span, "an infinite bound must be open: write `(` before it")
        if math.isinf(high) and not iv.high_open:
            self.err(iv.high.span, "an infinite bound must be open: write `)` after it")
        if low == math.inf or high == -math.inf:
            self.err(iv.span, f"`{fmt_num(low)}` cannot be a {'lower' if low == math.inf else 'upper'} bound")
        if not low < high:
            self.err(iv.span, f"empty range: the lower bound {fmt_num(low)} must be below the upper {fmt_num(high)}")
        return Range(low, high, iv.low_open, iv.high_open)

    def bind(
        self,
        args: tuple[A.Arg, ...] | None,
        names: tuple[str, ...],
        required: tuple[str, ...],
        what: str,
        at: Span,
        positional: bool = True,
    ) -> dict[str, A.Arg]:
        out: dict[str, A.Arg] = {}
        args = args or ()
        for i, a in enumerate(args):
            if a.key is None:
                if not positional:
                    self.err(a.span, f"`{what}` takes keyword arguments only (e.g. `{names[0]} = ...`)")
                if any(b.key is not None for b in args[:i]):
                    self.err(a.span, "a positional argument cannot follow a keyword argument")
                if i >= len(names):
                    n = len(names)
                    self.err(a.span, f"`{what}` takes {n} argument{'s' if n != 1 else ''}, got {len(args)}")
                key = names[i]
            else:
                key = a.key.value
                if key not in names:
                    if names:
                        msg = f"`{what}` has no argument `{key}` (it takes {quote_list(names)})" + suggest(key, names)
                    else:
                        msg = f"`{what}` takes no arguments"
                    self.err(a.key.span, msg)
                if key in out:
                    self.err(a.key.span, f"argument `{key}` given twice")
            out[key] = a
        for r in required:
            if r not in out:
                self.err(at, f"`{what}` needs the argument `{r}`")
        return out
