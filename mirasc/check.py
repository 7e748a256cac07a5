"""Semantic analysis: `mirasc.ast.Program` -> `mirasc.spec.Spec`.

Options are resolved first (`when` blocks), then every statement is checked, `param`, `let` and `def`
(the spec's own and the standard library's) are inlined into a pure `Expr` over builtins, and the
shapes (per-channel vs per-token scalar) are typed. Every problem is a `SpecError` at the offending token.
Nothing in a spec is ever evaluated as code.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from mirasc import ast as A
from mirasc.errors import SpecError
from mirasc.parse import _number, parse
from mirasc.resources import resource_file
from mirasc.spec import (
    ELEMENTWISE_FUNCTIONS,
    REDUCTIONS,
    Algorithm,
    Bias,
    BinOp,
    Call,
    Compare,
    Const,
    Expr,
    Gate,
    GateRef,
    KLMap,
    LqMap,
    Memory,
    Neg,
    Num,
    Operand,
    Reduce,
    Retention,
    SigmoidMap,
    SoftThresholdMap,
    Span,
    Spec,
    Surrogates,
    Var,
    Where,
)

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
MEMORY_KINDS = ("linear", "mlp")
MLP_ACTIVATIONS = ("gelu", "silu", "relu", "tanh", "identity")
MLP_NORMS = ("layernorm", "none")
RETENTION_TERMS = ("decay", "lq", "kl", "softthreshold", "sigmoid", "none")
ALGORITHMS = ("gd", "momentum")
GRADIENT_AT = ("previous", "decayed")
SURROGATE_FORMS = {"abs": ("exact", "sqrt", "logcosh"), "sign": ("exact", "tanh")}
RESERVED = frozenset(VARIABLES) | {"inf", "nan", "true", "false"} | frozenset(ARITY)

_KEYWORD = {
    A.ModelStmt: "model",
    A.MemoryStmt: "memory",
    A.GateStmt: "gate",
    A.ParamStmt: "param",
    A.OptionStmt: "option",
    A.WhenStmt: "when",
    A.LetStmt: "let",
    A.DefStmt: "def",
    A.BiasStmt: "bias",
    A.RetentionStmt: "retention",
    A.AlgorithmStmt: "algorithm",
    A.ChunkStmt: "chunk",
    A.SurrogateStmt: "surrogate",
}

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


def _quote_list(items: Iterable[str]) -> str:
    return ", ".join(f"`{i}`" for i in items)


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.5)
    return f"; did you mean `{close[0]}`?" if close else ""


@dataclass(frozen=True)
class _Range:
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
def _stdlib() -> tuple[str, dict[str, A.DefStmt]]:
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
    return dict(_stdlib()[1])


class _Checker:
    def __init__(self, prog: A.Program, text: str, file: str, options: Mapping[str, str | float] | None) -> None:
        self.prog = prog
        self.text = text
        self.file = file
        self.user_options = dict(options or {})
        self.std_text, self.std_defs = _stdlib()
        self.gates: dict[str, Gate] = {}
        self.params: dict[str, float] = {}
        self.lets: dict[str, A.LetStmt] = {}
        self.defs: dict[str, A.DefStmt] = {}
        self.let_cache: dict[str, tuple[Expr, str, int]] = {}
        self.nodes = 0  # size of the expression built so far (lets and arguments counted at each use)
        self.used_gates: set[str] = set()
        self.memory: Memory | None = None
        self.gradient_at_span: Span | None = None

    # ---------------------------------------------------------------------------------------------------
    def err(self, span: Span, message: str) -> NoReturn:
        if span.file == STDLIB_FILE:
            raise SpecError.from_span(span, self.std_text, message)
        if span.line < 1:
            span = Span(self.file, 1, 1)
        raise SpecError.from_span(span, self.text, message)

    # ---------------------------------------------------------------------------------------------------
    # options and `when`
    # ---------------------------------------------------------------------------------------------------
    def resolve_options(self) -> tuple[list[A.Stmt], list[tuple[str, str]]]:
        decls: dict[str, A.OptionStmt] = {}
        for st in self.prog.stmts:
            if isinstance(st, A.OptionStmt):
                name = st.name.value
                if name in decls:
                    first = decls[name].name.span
                    self.err(st.name.span, f"duplicate option `{name}` (first declared at {first.line}:{first.col})")
                seen: set[str] = set()
                for v in st.values:
                    if v.value in seen:
                        self.err(v.span, f"option `{name}` lists `{v.value}` twice")
                    seen.add(v.value)
                decls[name] = st
        chosen: dict[str, str] = {}
        for name, st in decls.items():
            allowed = [v.value for v in st.values]
            if name in self.user_options:
                value = self.user_options[name]
                if not isinstance(value, str) or value not in allowed:
                    self.err(
                        st.name.span,
                        f"option `{name}` cannot be {value!r}; its values are {_quote_list(allowed)}",
                    )
                chosen[name] = value
            else:
                chosen[name] = allowed[0]
        self.option_decls = decls
        self.chosen = chosen
        flat: list[A.Stmt] = []
        self._flatten(self.prog.stmts, flat, top=True)
        return flat, [(n, chosen[n]) for n in decls]

    def _flatten(self, stmts: Iterable[A.Stmt], out: list[A.Stmt], top: bool) -> None:
        for st in stmts:
            if isinstance(st, A.OptionStmt):
                if not top:
                    self.err(st.span, "`option` must be declared at the top level, not inside `when`")
                continue
            if isinstance(st, A.WhenStmt):
                name = st.option.value
                if name not in self.option_decls:
                    self.err(st.option.span, f"unknown option `{name}`" + _suggest(name, self.option_decls))
                allowed = [v.value for v in self.option_decls[name].values]
                if st.value.value not in allowed:
                    self.err(
                        st.value.span,
                        f"option `{name}` has no value `{st.value.value}` (its values are {_quote_list(allowed)})"
                        + _suggest(st.value.value, allowed),
                    )
                if self.chosen[name] == st.value.value:
                    self._flatten(st.body, out, top=False)
                continue
            out.append(st)

    # ---------------------------------------------------------------------------------------------------
    # the whole spec
    # ---------------------------------------------------------------------------------------------------
    def run(self) -> Spec:
        stmts, options = self.resolve_options()

        singles: dict[str, A.Stmt] = {}
        names: dict[str, tuple[str, Span]] = {n: ("option", d.name.span) for n, d in self.option_decls.items()}
        param_stmts: list[A.ParamStmt] = []
        gate_stmts: list[A.GateStmt] = []
        for st in stmts:
            if isinstance(st, (A.GateStmt, A.ParamStmt, A.LetStmt, A.DefStmt)):
                kw = _KEYWORD[type(st)]
                n = st.name
                if n.value in RESERVED:
                    self.err(n.span, f"`{n.value}` is a reserved name and cannot be declared")
                if n.value in names:
                    kind, first = names[n.value]
                    what = "duplicate" if kind == kw else f"`{n.value}` is already declared as a {kind};"
                    self.err(n.span, f"{what} {kw} `{n.value}` (first declared at {first.line}:{first.col})")
                names[n.value] = (kw, n.span)
                if isinstance(st, A.GateStmt):
                    gate_stmts.append(st)
                elif isinstance(st, A.ParamStmt):
                    param_stmts.append(st)
                elif isinstance(st, A.LetStmt):
                    self.lets[n.value] = st
                else:
                    self.defs[n.value] = st
                continue
            key = _KEYWORD[type(st)]
            if isinstance(st, A.SurrogateStmt):
                key = f"surrogate {st.target.value}"
            if key in singles:
                first = singles[key].span
                self.err(st.span, f"duplicate `{key}` (first declared at {first.line}:{first.col})")
            singles[key] = st

        # params (with overrides from options=)
        self._params(param_stmts)
        known_keys = set(self.option_decls) | set(self.params)
        for key in self.user_options:
            if key not in known_keys:
                self.err(Span(self.file, 1, 1), f"unknown option `{key}`" + _suggest(key, known_keys))

        # gates, memory
        for st in gate_stmts:
            self.gates[st.name.value] = self._gate(st)
        self._require(singles, "memory")
        self.memory = self._memory(singles["memory"])  # type: ignore[arg-type]

        # names in every let/def body resolve (even unused ones)
        for d in self.defs.values():
            self._resolve_names(d.expr, {p.name.value for p in d.params})
            for p in d.params:
                if p.interval is not None:
                    self._interval(p.interval)
        for lt in self.lets.values():
            self._resolve_names(lt.expr, set())

        self._require(singles, "bias")
        bias = self._bias(singles["bias"])  # type: ignore[arg-type]
        retention = self._retention(singles.get("retention"))  # type: ignore[arg-type]
        self._require(singles, "algorithm")
        algorithm = self._algorithm(singles["algorithm"])  # type: ignore[arg-type]
        if isinstance(retention.map, KLMap) and algorithm.kind == "momentum":
            self.err(
                retention.map.span,
                "`kl` retention cannot be combined with `momentum`: its lag step is an exact softmax step on "
                "the weights, which has no momentum buffer",
            )
        chunk = self._chunk(singles.get("chunk"))  # type: ignore[arg-type]
        surrogates = self._surrogates(singles.get("surrogate abs"), singles.get("surrogate sign"))  # type: ignore[arg-type]
        self._check_gradient_at(algorithm, retention, bias, surrogates)

        for st in gate_stmts:
            if st.name.value not in self.used_gates:
                self.err(st.name.span, f"gate `{st.name.value}` is declared but never used")

        model = singles.get("model")
        if model is not None:
            name = model.name.value  # type: ignore[union-attr]
        else:
            name = "spec" if self.file.startswith("<") else (Path(self.file).stem or "spec")
        return Spec(
            name=name,
            file=self.file,
            source=self.text,
            memory=self.memory,
            gates=tuple(self.gates[st.name.value] for st in gate_stmts),
            bias=bias,
            retention=retention,
            algorithm=algorithm,
            chunk_size=chunk,
            surrogates=surrogates,
            options=tuple(options),
            params=tuple(self.params.items()),
        )

    def _require(self, singles: dict[str, A.Stmt], kw: str) -> None:
        if kw not in singles:
            self.err(Span(self.file, 1, 1), f"missing `{kw}` statement (every spec needs one)")

    # ---------------------------------------------------------------------------------------------------
    # constants
    # ---------------------------------------------------------------------------------------------------
    def _number(self, e: A.ENum) -> float:
        if not math.isfinite(e.value):
            self.err(e.span, f"number `{e.text}` is out of range")
        return e.value

    def _const(self, e: A.AExpr, what: str) -> float:
        """A constant expression: numbers, params, + - * / ^ and negation (evaluated numerically)."""
        if isinstance(e, A.ENum):
            return self._number(e)
        if isinstance(e, A.EName):
            if e.name in self.params:
                return self.params[e.name]
            if e.name in self.gates:
                self.err(e.span, f"{what} must be a number, not the gate `{e.name}`")
            self.err(e.span, f"{what} must be a number; `{e.name}` is not a param" + _suggest(e.name, self.params))
        if isinstance(e, A.ENeg):
            return -self._const(e.arg, what)
        if isinstance(e, A.EBin):
            a, b = self._const(e.lhs, what), self._const(e.rhs, what)
            try:
                if e.op == "+":
                    out = a + b
                elif e.op == "-":
                    out = a - b
                elif e.op == "*":
                    out = a * b
                elif e.op == "/":
                    out = a / b
                else:
                    out = float(a**b) if not (a == 0 and b < 0) else math.inf
            except (ZeroDivisionError, OverflowError, ValueError):
                out = math.nan
            if isinstance(out, complex) or not math.isfinite(out):
                self.err(e.span, f"{what} is not a finite number")
            return float(out)
        self.err(e.span, f"{what} must be a number")

    def _params(self, stmts: list[A.ParamStmt]) -> None:
        for st in stmts:
            name = st.name.value
            value = self._const(st.value, f"param `{name}`")
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

    # ---------------------------------------------------------------------------------------------------
    # intervals and gates
    # ---------------------------------------------------------------------------------------------------
    def _bound(self, b: A.Bound) -> float:
        if b.is_name:
            if b.text != "inf":
                self.err(b.span, f"an interval bound must be a number or `inf`, not `{b.text}`")
            x = math.inf
        else:
            x = _number(b.text)
            if not math.isfinite(x):
                self.err(b.span, f"number `{b.text}` is out of range")
        return -x if b.negative else x

    def _interval(self, iv: A.Interval) -> _Range:
        low, high = self._bound(iv.low), self._bound(iv.high)
        if math.isinf(low) and not iv.low_open:
            self.err(iv.span, "an infinite bound must be open: write `(` before it")
        if math.isinf(high) and not iv.high_open:
            self.err(iv.high.span, "an infinite bound must be open: write `)` after it")
        if low == math.inf or high == -math.inf:
            self.err(iv.span, f"`{fmt_num(low)}` cannot be a {'lower' if low == math.inf else 'upper'} bound")
        if not low < high:
            self.err(iv.span, f"empty range: the lower bound {fmt_num(low)} must be below the upper {fmt_num(high)}")
        return _Range(low, high, iv.low_open, iv.high_open)

    def _gate(self, st: A.GateStmt) -> Gate:
        kind = st.kind.value
        if kind not in GATE_KINDS:
            self.err(
                st.kind.span, f"unknown gate kind `{kind}` (use `scalar` or `channel`)" + _suggest(kind, GATE_KINDS)
            )
        rng = _Range(-math.inf, math.inf, True, True)
        activation: str | None = None
        static: bool | None = None
        seen: dict[str, Span] = {}
        for at in st.attrs:
            key = at.key
            if key == "flag":
                flag = at.value.value  # type: ignore[union-attr]
                if flag not in GATE_FLAGS:
                    known = (*GATE_FLAGS, "range", "activation")
                    self.err(at.span, f"unknown gate attribute `{flag}`" + _suggest(flag, known))
                key = "static/data_dependent"
            if key in seen:
                first = seen[key]
                self.err(at.span, f"duplicate gate attribute `{key}` (first given at {first.line}:{first.col})")
            seen[key] = at.span
            if at.key == "range":
                rng = self._interval(at.value)  # type: ignore[arg-type]
            elif at.key == "activation":
                act = at.value.value  # type: ignore[union-attr]
                if act not in GATE_ACTIVATIONS:
                    self.err(
                        at.value.span,  # type: ignore[union-attr]
                        f"unknown gate activation `{act}` (one of {_quote_list(GATE_ACTIVATIONS)})"
                        + _suggest(act, GATE_ACTIVATIONS),
                    )
                activation = act
            else:
                static = at.value.value == "static"  # type: ignore[union-attr]
        return Gate(
            name=st.name.value,
            kind=kind,  # type: ignore[arg-type]
            low=rng.low,
            high=rng.high,
            low_open=rng.low_open,
            high_open=rng.high_open,
            activation=activation,
            data_dependent=not static,
            span=st.name.span,
        )

    # ---------------------------------------------------------------------------------------------------
    # argument binding
    # ---------------------------------------------------------------------------------------------------
    def _bind(
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
                        msg = f"`{what}` has no argument `{key}` (it takes {_quote_list(names)})" + _suggest(key, names)
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

    # ---------------------------------------------------------------------------------------------------
    # memory
    # ---------------------------------------------------------------------------------------------------
    def _word(self, a: A.Arg, allowed: tuple[str, ...], what: str) -> str:
        e = a.value
        if not isinstance(e, A.EName) or e.name not in allowed:
            got = f"`{e.name}`" if isinstance(e, A.EName) else "that"
            hint = _suggest(e.name, allowed) if isinstance(e, A.EName) else ""
            self.err(e.span, f"{what} must be one of {_quote_list(allowed)}, not {got}{hint}")
        return e.name

    def _int(self, a: A.Arg, lo: int, hi: int, what: str) -> int:
        x = self._const(a.value, what)
        if x != int(x) or not lo <= x <= hi:
            self.err(a.value.span, f"{what} must be an integer in [{lo}, {hi}], got {fmt_num(x)}")
        return int(x)

    def _memory(self, st: A.MemoryStmt) -> Memory:
        kind = st.kind.value
        if kind not in MEMORY_KINDS:
            self.err(st.kind.span, f"unknown memory `{kind}` (use `linear` or `mlp`)" + _suggest(kind, MEMORY_KINDS))
        if kind == "linear":
            if st.args is not None:
                self.err(st.kind.span, "`memory linear` takes no arguments")
            return Memory(
                kind="linear", depth=1, expansion=1, activation="identity", residual=False, norm="none", span=st.span
            )
        names = ("depth", "expansion", "activation", "residual", "norm", "norm_eps")
        b = self._bind(st.args, names, (), "mlp", st.kind.span, positional=False)
        depth = self._int(b["depth"], 1, 8, "depth") if "depth" in b else 2
        expansion = self._int(b["expansion"], 1, 16, "expansion") if "expansion" in b else 4
        activation = self._word(b["activation"], MLP_ACTIVATIONS, "activation") if "activation" in b else "gelu"
        residual = self._word(b["residual"], ("true", "false"), "residual") == "true" if "residual" in b else True
        norm = self._word(b["norm"], MLP_NORMS, "norm") if "norm" in b else "layernorm"
        eps = 1e-5
        if "norm_eps" in b:
            eps = self._const(b["norm_eps"].value, "norm_eps")
            if not eps > 0:
                self.err(b["norm_eps"].value.span, f"norm_eps must be > 0, got {fmt_num(eps)}")
        if depth == 1:  # one D x D matrix: no hidden layer, so expansion and activation have no meaning
            expansion, activation = 1, "identity"
        return Memory(
            kind="mlp",
            depth=depth,
            expansion=expansion,
            activation=activation,
            residual=residual,
            norm=norm,
            norm_eps=eps,
            span=st.span,
        )  # type: ignore[arg-type]

    # ---------------------------------------------------------------------------------------------------
    # expressions
    # ---------------------------------------------------------------------------------------------------
    def _known_names(self, local: Iterable[str]) -> set[str]:
        return set(local) | set(VARIABLES) | set(self.gates) | set(self.params) | set(self.lets)

    def _known_functions(self) -> set[str]:
        return set(ARITY) | set(self.defs) | set(self.std_defs)

    def _unknown_name(self, name: str, span: Span, local: Iterable[str]) -> NoReturn:
        if name == "inf":
            self.err(span, "`inf` is only allowed as an interval bound")
        if name == "nan":
            self.err(span, "`nan` is not a number a spec may use")
        self.err(span, f"unknown name `{name}`" + _suggest(name, self._known_names(local)))

    def _unknown_function(self, fn: A.Name) -> NoReturn:
        if fn.value in self._known_names(()):
            self.err(fn.span, f"`{fn.value}` is not a function")
        self.err(fn.span, f"unknown function `{fn.value}`" + _suggest(fn.value, self._known_functions()))

    def _resolve_names(self, e: A.AExpr, local: set[str]) -> None:
        """Check that every name and function in `e` exists (without expanding anything)."""
        stack = [e]
        while stack:
            e = stack.pop()
            if isinstance(e, A.EName):
                if e.name not in local and e.name not in self._known_names(()):
                    self._unknown_name(e.name, e.span, local)
            elif isinstance(e, A.ENum):
                self._number(e)
            elif isinstance(e, (A.EBin, A.ECompare)):
                stack += [e.rhs, e.lhs]
            elif isinstance(e, A.ENeg):
                stack.append(e.arg)
            elif isinstance(e, A.ECall):
                if e.fn.value not in self._known_functions():
                    self._unknown_function(e.fn)
                stack += [a.value for a in reversed(e.args)]

    def _tick(self, span: Span, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            self.err(span, f"the attentional bias expands to more than {MAX_NODES} nodes")

    def _conv(
        self, e: A.AExpr, env: dict[str, tuple[Expr, str, int]], stack: tuple[str, ...], at: Span | None
    ) -> tuple[Expr, str]:
        """Inline `e` into a builtin-only Expr; returns (expr, shape). `at` overrides spans (stdlib bodies)."""
        sp = at or e.span
        self._tick(e.span)
        if isinstance(e, A.ENum):
            return Num(self._number(e), sp), SCALAR
        if isinstance(e, A.EName):
            n = e.name
            if n in env:
                val, shape, size = env[n]
                self._tick(e.span, size)
                return val, shape
            if n in VARIABLES:
                return Var(n, n, sp), CHANNEL  # type: ignore[arg-type]
            if n in self.gates:
                g = self.gates[n]
                return Var(n, "gate", sp), (CHANNEL if g.kind == "channel" else SCALAR)
            if n in self.params:
                return Num(self.params[n], sp), SCALAR
            if n in self.lets:
                if f"let {n}" in stack:
                    self.err(e.span, f"recursive definition of `{n}`")
                if n not in self.let_cache:
                    before = self.nodes
                    val, shape = self._conv(self.lets[n].expr, {}, (*stack, f"let {n}"), None)
                    self.let_cache[n] = (val, shape, self.nodes - before)
                    return val, shape
                val, shape, size = self.let_cache[n]
                self._tick(e.span, size)
                return val, shape
            self._unknown_name(n, e.span, env)
        if isinstance(e, A.ENeg):
            arg, shape = self._conv(e.arg, env, stack, at)
            if isinstance(arg, Num):
                return Num(-arg.value, sp), SCALAR
            return Neg(arg, sp), shape
        if isinstance(e, A.EBin):
            lhs, ls = self._conv(e.lhs, env, stack, at)
            rhs, rs = self._conv(e.rhs, env, stack, at)
            return BinOp(e.op, lhs, rhs, sp), _join(ls, rs)  # type: ignore[arg-type]
        if isinstance(e, A.ECompare):
            self.err(e.span, "a comparison can only be the first argument of `where`")
        if isinstance(e, A.ECall):
            return self._call(e, env, stack, at)
        self.err(sp, "unsupported expression")  # pragma: no cover

    def _call(
        self, e: A.ECall, env: dict[str, tuple[Expr, str, int]], stack: tuple[str, ...], at: Span | None
    ) -> tuple[Expr, str]:
        fn = e.fn.value
        sp = at or e.span
        if fn in self.defs or (fn in self.std_defs and fn not in ARITY):
            return self._expand(e, env, stack, at)
        if fn not in ARITY:
            self._unknown_function(e.fn)
        for a in e.args:
            if a.key is not None:
                self.err(a.key.span, f"`{fn}` takes no keyword arguments")
        n = ARITY[fn]
        if len(e.args) != n:
            self.err(e.fn.span, f"`{fn}` takes {n} argument{'s' if n != 1 else ''}, got {len(e.args)}")
        if fn == "where":
            cond = e.args[0].value
            if not isinstance(cond, A.ECompare):
                self.err(cond.span, "the condition of `where` must be a comparison (< <= > >= == !=)")
            cl, cls_ = self._conv(cond.lhs, env, stack, at)
            cr, crs = self._conv(cond.rhs, env, stack, at)
            then, ts = self._conv(e.args[1].value, env, stack, at)
            other, os_ = self._conv(e.args[2].value, env, stack, at)
            c = Compare(cond.op, cl, cr, at or cond.span)
            return Where(c, then, other, sp), _join(cls_, crs, ts, os_)
        args = [self._conv(a.value, env, stack, at) for a in e.args]
        if fn in REDUCTIONS:
            arg, shape = args[0]
            if shape == SCALAR:
                self.err(
                    e.fn.span,
                    f"`{fn}` reduces over the channel axis, but its argument is already a per-token scalar",
                )
            return Reduce(fn, arg, sp), SCALAR  # type: ignore[arg-type]
        return Call(fn, tuple(a for a, _ in args), sp), _join(*(s for _, s in args))

    def _expand(
        self, e: A.ECall, env: dict[str, tuple[Expr, str, int]], stack: tuple[str, ...], at: Span | None
    ) -> tuple[Expr, str]:
        fn = e.fn.value
        user = fn in self.defs
        d = self.defs[fn] if user else self.std_defs[fn]
        key = f"def {fn}"
        if key in stack:
            self.err(e.fn.span, f"recursive definition of `{fn}`")
        pnames = tuple(p.name.value for p in d.params)
        n = len(pnames)
        positional = [a for a in e.args if a.key is None]
        if len(positional) > n:
            sig = f" ({', '.join(pnames)})" if pnames else ""
            self.err(e.fn.span, f"`{fn}` takes {n} argument{'s' if n != 1 else ''}{sig}, got {len(e.args)}")
        bound = self._bind(e.args, pnames, (), fn, e.fn.span)
        missing = [p for p in pnames if p not in bound]
        if missing:
            sig = ", ".join(pnames)
            self.err(
                e.fn.span,
                f"`{fn}` takes {n} argument{'s' if n != 1 else ''} ({sig}), got {len(e.args)}; "
                f"`{missing[0]}` is missing",
            )
        local: dict[str, tuple[Expr, str, int]] = {}
        for p in d.params:
            a = bound[p.name.value]
            before = self.nodes
            val, shape = self._conv(a.value, env, stack, at)
            if p.interval is not None:
                rng = self._interval(p.interval)
                self._check_in(rng, val, p.name.value, a.value.span if at is None else at)
            local[p.name.value] = (val, shape, self.nodes - before)
        body_at = at if at is not None else (None if user else e.span)
        return self._conv(d.expr, local, (*stack, key), body_at)

    def _check_in(self, rng: _Range, val: Expr, pname: str, at: Span) -> None:
        x = _fold(val)
        if x is not None:
            if not rng.holds(x, x):
                self.err(at, f"{pname} must be in {rng}, got {fmt_num(x)}")
        elif isinstance(val, Var) and val.role == "gate":
            g = self.gates[val.name]
            if not rng.holds(g.low, g.high, g.low_open, g.high_open):
                gr = fmt_range(g.low, g.high, g.low_open, g.high_open)
                self.err(at, f"{pname} must be in {rng}, but gate `{g.name}` has range {gr}")

    def _bias(self, st: A.BiasStmt) -> Bias:
        expr, _shape = self._conv(st.expr, {}, (), None)
        if not _depends_on_prediction(expr):
            self.err(st.expr.span, "the attentional bias does not depend on the memory's prediction (y or r)")
        self.used_gates |= _gates_in(expr)
        return Bias(expr=expr, text=st.text, span=st.expr.span)

    # ---------------------------------------------------------------------------------------------------
    # operands, retention, algorithm
    # ---------------------------------------------------------------------------------------------------
    def _operand(self, a: A.Arg, role: str, lo: float, hi: float, weights: bool = True) -> Operand:
        e = a.value
        if isinstance(e, A.EName):
            n = e.name
            if n in self.gates:
                g = self.gates[n]
                if not g.contains(lo, hi):
                    gr = fmt_range(g.low, g.high, g.low_open, g.high_open)
                    self.err(
                        e.span,
                        f"gate `{n}` has range {gr}; `{role}` needs a range inside {_closed(lo, hi)}",
                    )
                if weights and g.kind == "channel" and self.memory is not None and self.memory.depth >= 3:
                    self.err(
                        e.span,
                        "channel-wise gates act on the D-sized axis of each weight matrix; "
                        f"depth {self.memory.depth} has an h×h middle matrix (use a scalar gate or depth ≤ 2)",
                    )
                self.used_gates.add(n)
                return GateRef(n, e.span)
            if n in self.params:
                x = self.params[n]
            else:
                self.err(e.span, f"unknown gate or param `{n}`" + _suggest(n, set(self.gates) | set(self.params)))
        elif isinstance(e, A.ENum) or (isinstance(e, A.ENeg) and isinstance(e.arg, A.ENum)):
            x = self._const(e, role)
        else:
            self.err(e.span, f"`{role}` must be a gate name, a param name or a number")
        if not lo <= x <= hi:
            self.err(e.span, f"{role} must be in {_closed(lo, hi)}, got {fmt_num(x)}")
        return Const(x, e.span)

    def _const_arg(self, a: A.Arg, what: str, positive: bool = True, at_least: float | None = None) -> float:
        x = self._const(a.value, what)
        if at_least is not None and x < at_least:
            self.err(a.value.span, f"{what} must be ≥ {fmt_num(at_least)}, got {fmt_num(x)}")
        if positive and not x > 0:
            self.err(a.value.span, f"{what} must be > 0, got {fmt_num(x)}")
        return x

    def _retention(self, st: A.RetentionStmt | None) -> Retention:
        if st is None:
            return Retention()
        decay: Operand | None = None
        decay_span: Span | None = None
        bmap = None
        map_term: A.RetentionTerm | None = None
        for term in st.terms:
            name = term.name.value
            if name not in RETENTION_TERMS:
                self.err(term.name.span, f"unknown retention term `{name}`" + _suggest(name, RETENTION_TERMS))
            if name == "none":
                if len(st.terms) > 1 or term.args is not None:
                    self.err(term.name.span, "`none` must be the only retention term")
                return Retention(span=st.span)
            if name == "decay":
                if decay_span is not None:
                    self.err(term.span, f"duplicate `decay` (first declared at {decay_span.line}:{decay_span.col})")
                b = self._bind(term.args, ("value",), ("value",), "decay", term.name.span)
                decay = self._operand(b["value"], "decay", 0.0, 1.0)
                decay_span = term.span
                continue
            if map_term is not None:
                fs = map_term.span
                self.err(
                    term.span,
                    f"at most one boundary map: `{map_term.name.value}` was given at {fs.line}:{fs.col}",
                )
            map_term = term
            if name == "lq":
                b = self._bind(term.args, ("q", "eps", "form"), ("q",), "lq", term.name.span)
                q = self._const_arg(b["q"], "q", at_least=1.0)
                eps = self._const_arg(b["eps"], "eps") if "eps" in b else 1e-6
                lq_form = self._word(b["form"], ("literal", "pnorm"), "form") if "form" in b else "literal"
                # the p-norm map and its frozen chunk slope hold |A|^(q-1) and |A|^(q-2): below q = 2 the slope is
                # infinite at a zero entry, and for 2 < q < 3 the slope's own derivative is (0 * inf at a zero entry)
                if lq_form == "pnorm" and not (q == 2 or q >= 3):
                    self.err(b["q"].value.span, f"lq(form = pnorm) needs q = 2 or q ≥ 3 (the map and its slope are "
                             f"differentiable at zero entries only there), got {fmt_num(q)}")
                bmap = LqMap(q=q, eps=eps, form=lq_form, span=term.span)  # type: ignore[arg-type]
            elif name == "kl":
                b = self._bind(term.args, ("eps",), (), "kl", term.name.span)
                eps = self._const_arg(b["eps"], "eps") if "eps" in b else 1e-6
                bmap = KLMap(eps=eps, span=term.span)
            elif name == "softthreshold":
                b = self._bind(term.args, ("gamma", "form"), ("gamma",), "softthreshold", term.name.span)
                ga = b["gamma"].value
                if isinstance(ga, A.EName) and ga.name in self.gates and self.gates[ga.name].data_dependent:
                    self.err(
                        ga.span,
                        f"boundary maps act at chunk ends where no token's gate applies; declare `{ga.name}` static",
                    )
                gamma = self._operand(b["gamma"], "gamma", 0.0, math.inf, weights=False)
                form = self._word(b["form"], ("retaining", "ftrl"), "form") if "form" in b else "retaining"
                bmap = SoftThresholdMap(gamma=gamma, form=form, span=term.span)  # type: ignore[arg-type]
            else:  # sigmoid
                if term.args:
                    self.err(term.args[0].span, "`sigmoid` takes no arguments")
                bmap = SigmoidMap(span=term.span)
        return Retention(decay=decay, map=bmap, span=st.span)

    def _algorithm(self, st: A.AlgorithmStmt) -> Algorithm:
        kind = st.kind.value
        if kind not in ALGORITHMS:
            self.err(st.kind.span, f"unknown algorithm `{kind}` (use `gd` or `momentum`)" + _suggest(kind, ALGORITHMS))
        if kind == "gd":
            b = self._bind(st.args, ("lr", "gradient_at"), ("lr",), "gd", st.kind.span)
            at = self._word(b["gradient_at"], GRADIENT_AT, "gradient_at") if "gradient_at" in b else "previous"
            self.gradient_at_span = b["gradient_at"].value.span if "gradient_at" in b else None
            return Algorithm("gd", self._operand(b["lr"], "lr", 0.0, math.inf), gradient_at=at,  # type: ignore[arg-type]
                             span=st.span)
        b = self._bind(st.args, ("lr", "momentum"), ("lr", "momentum"), "momentum", st.kind.span)
        lr = self._operand(b["lr"], "lr", 0.0, math.inf)
        mom = self._operand(b["momentum"], "momentum", 0.0, 1.0)
        return Algorithm("momentum", lr, mom, span=st.span)

    def _check_gradient_at(self, algorithm: Algorithm, retention: Retention, bias: Bias,
                           surrogates: Surrogates) -> None:
        """`gradient_at = decayed` is defined where chunks are exact (the per-token step is then the chunk's
        semantics at every chunk size); elsewhere the chunk approximation takes every gradient at W'."""
        if algorithm.gradient_at == "previous" or self.memory is None:
            return
        from .chunkform import chunk_form

        probe = Spec(name="", file=self.file, source=self.text, memory=self.memory, gates=tuple(self.gates.values()),
                     bias=bias, retention=retention, algorithm=algorithm, surrogates=surrogates)
        form = chunk_form(probe)
        if not form.exact:
            self.err(self.gradient_at_span or algorithm.span,
                     f"`gradient_at = decayed` needs an exactly chunked update; this spec gets the {form.describe()}")

    # ---------------------------------------------------------------------------------------------------
    # chunk, surrogates
    # ---------------------------------------------------------------------------------------------------
    def _chunk(self, st: A.ChunkStmt | None) -> int:
        if st is None:
            return 64
        x = self._const(st.value, "the chunk size")
        ok = x == 1 or (x == int(x) and 16 <= x <= 1024 and (int(x) & (int(x) - 1)) == 0)
        if not ok:
            self.err(st.value.span, f"chunk size must be 1 or a power of two from 16 to 1024, got {fmt_num(x)}")
        return int(x)

    def _surrogates(self, sa: A.SurrogateStmt | None, ss: A.SurrogateStmt | None) -> Surrogates:
        kw: dict[str, object] = {}
        for st in (sa, ss):
            if st is None:
                continue
            target = st.target.value
            if target not in SURROGATE_FORMS:
                self.err(
                    st.target.span,
                    f"unknown surrogate target `{target}` (use `abs` or `sign`)" + _suggest(target, SURROGATE_FORMS),
                )
            forms = SURROGATE_FORMS[target]
            form = st.form.value
            if form not in forms:
                self.err(
                    st.form.span,
                    f"`surrogate {target}` must be one of {_quote_list(forms)}, not `{form}`" + _suggest(form, forms),
                )
            kw[target] = form
            if form == "exact":
                self._bind(st.args, (), (), "exact", st.form.span)
            elif form == "sqrt":
                b = self._bind(st.args, ("eps",), (), "sqrt", st.form.span)
                if "eps" in b:
                    kw["abs_eps"] = self._const_arg(b["eps"], "eps")
            else:
                b = self._bind(st.args, ("sharpness",), (), form, st.form.span)
                if "sharpness" in b:
                    kw[f"{target}_sharpness"] = self._const_arg(b["sharpness"], "sharpness")
        return Surrogates(**kw)  # type: ignore[arg-type]


def _closed(lo: float, hi: float) -> str:
    return fmt_range(lo, hi, math.isinf(lo), math.isinf(hi))


def _join(*shapes: str) -> str:
    return CHANNEL if CHANNEL in shapes else SCALAR


def _fold(e: Expr) -> float | None:
    """The value of a constant expression (numbers, negation, + - * / ^), or None."""
    if isinstance(e, Num):
        return e.value
    if isinstance(e, Neg):
        a = _fold(e.arg)
        return None if a is None else -a
    if isinstance(e, BinOp):
        a, b = _fold(e.lhs), _fold(e.rhs)
        if a is None or b is None:
            return None
        try:
            out = {"+": a + b, "-": a - b, "*": a * b}.get(e.op)
            if e.op == "/":
                out = a / b
            elif e.op == "^":
                out = a**b
        except (ZeroDivisionError, OverflowError, ValueError):
            return math.nan
        return float(out) if isinstance(out, (int, float)) else math.nan
    return None


def _walk(e: Expr) -> Iterable[Expr]:
    stack: list[Expr] = [e]
    while stack:
        x = stack.pop()
        yield x
        if isinstance(x, (BinOp, Compare)):
            stack += [x.lhs, x.rhs]
        elif isinstance(x, (Neg, Reduce)):
            stack.append(x.arg)
        elif isinstance(x, Call):
            stack += list(x.args)
        elif isinstance(x, Where):
            stack += [x.cond, x.then, x.otherwise]


def _depends_on_prediction(e: Expr) -> bool:
    return any(isinstance(x, Var) and x.role in ("y", "r") for x in _walk(e))


def _gates_in(e: Expr) -> set[str]:
    return {x.name for x in _walk(e) if isinstance(x, Var) and x.role == "gate"}


def check(
    ast: A.Program, text: str | None = None, file: str | None = None, options: Mapping[str, str | float] | None = None
) -> Spec:
    """Check a parsed spec and build its `Spec`. `options` picks `option` values and overrides `param`s."""
    text = ast.text if text is None else text
    file = ast.file if file is None else file
    try:
        return _Checker(ast, text, file, options).run()
    except RecursionError:
        raise SpecError.at(file, text, 1, 1, "the spec's expressions are too large or nested too deeply") from None


__all__ = ["check", "fmt_num", "fmt_range", "stdlib_defs"]
