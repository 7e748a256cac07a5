"""Elaboration: a spec's expressions inlined into pure `Expr`s over builtins.

`param`s become numbers, `let`s and `def`s (the spec's own and the standard library's) are expanded at each use
with their arguments checked against the parameters' intervals, and every value is typed as a per-channel or
per-token scalar shape. The attentional bias is elaborated here; the size of what it expands to is bounded
(MAX_NODES), so a spec cannot make the checker build an unbounded tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from mirasc import ast as A
from mirasc.spec import REDUCTIONS, Bias, BinOp, Call, Compare, Expr, Neg, Num, Reduce, Span, Var, Where

from .context import ARITY, CHANNEL, MAX_NODES, SCALAR, VARIABLES, Context, Range, arith, fmt_num, fmt_range, suggest


class Elaborator:
    """Inlines the expressions of one spec (its declarations are the context's)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.let_cache: dict[str, tuple[Expr, str, int]] = {}
        self.nodes = 0  # size of the expression built so far (lets and arguments counted at each use)

    def known_names(self, local: Iterable[str]) -> set[str]:
        return set(local) | set(VARIABLES) | set(self.ctx.gates) | set(self.ctx.params) | set(self.ctx.lets)

    def known_functions(self) -> set[str]:
        return set(ARITY) | set(self.ctx.defs) | set(self.ctx.std_defs)

    def unknown_name(self, name: str, span: Span, local: Iterable[str]) -> NoReturn:
        if name == "inf":
            self.ctx.err(span, "`inf` is only allowed as an interval bound")
        if name == "nan":
            self.ctx.err(span, "`nan` is not a number a spec may use")
        self.ctx.err(span, f"unknown name `{name}`" + suggest(name, self.known_names(local)))

    def unknown_function(self, fn: A.Name) -> NoReturn:
        if fn.value in self.known_names(()):
            self.ctx.err(fn.span, f"`{fn.value}` is not a function")
        self.ctx.err(fn.span, f"unknown function `{fn.value}`" + suggest(fn.value, self.known_functions()))

    def resolve_names(self, e: A.AExpr, local: set[str]) -> None:
        """Check that every name and function in `e` exists (without expanding anything)."""
        stack = [e]
        while stack:
            e = stack.pop()
            if isinstance(e, A.EName):
                if e.name not in local and e.name not in self.known_names(()):
                    self.unknown_name(e.name, e.span, local)
            elif isinstance(e, A.ENum):
                self.ctx.number(e)
            elif isinstance(e, (A.EBin, A.ECompare)):
                stack += [e.rhs, e.lhs]
            elif isinstance(e, A.ENeg):
                stack.append(e.arg)
            elif isinstance(e, A.ECall):
                if e.fn.value not in self.known_functions():
                    self.unknown_function(e.fn)
                stack += [a.value for a in reversed(e.args)]

    def tick(self, span: Span, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            self.ctx.err(span, f"the attentional bias expands to more than {MAX_NODES} nodes")

    def conv(
        self, e: A.AExpr, env: dict[str, tuple[Expr, str, int]], stack: tuple[str, ...], at: Span | None
    ) -> tuple[Expr, str]:
        """Inline `e` into a builtin-only Expr; returns (expr, shape). `at` overrides spans (stdlib bodies)."""
        sp = at or e.span
        self.tick(e.span)
        if isinstance(e, A.ENum):
            return Num(self.ctx.number(e), sp), SCALAR
        if isinstance(e, A.EName):
            n = e.name
            if n in env:
                val, shape, size = env[n]
                self.tick(e.span, size)
                return val, shape
            if n in VARIABLES:
                return Var(n, n, sp), CHANNEL  # type: ignore[arg-type]
            if n in self.ctx.gates:
                g = self.ctx.gates[n]
                return Var(n, "gate", sp), (CHANNEL if g.kind == "channel" else SCALAR)
            if n in self.ctx.params:
                return Num(self.ctx.params[n], sp), SCALAR
            if n in self.ctx.lets:
                if f"let {n}" in stack:
                    self.ctx.err(e.span, f"recursive definition of `{n}`")
                if n not in self.let_cache:
                    before = self.nodes
                    val, shape = self.conv(self.ctx.lets[n].expr, {}, (*stack, f"let {n}"), None)
                    self.let_cache[n] = (val, shape, self.nodes - before)
                    return val, shape
                val, shape, size = self.let_cache[n]
                self.tick(e.span, size)
                return val, shape
            self.unknown_name(n, e.span, env)
        if isinstance(e, A.ENeg):
            arg, shape = self.conv(e.arg, env, stack, at)
            if isinstance(arg, Num):
                return Num(-arg.value, sp), SCALAR
            return Neg(arg, sp), shape
        if isinstance(e, A.EBin):
            lhs, ls = self.conv(e.lhs, env, stack, at)
            rhs, rs = self.conv(e.rhs, env, stack, at)
            return BinOp(e.op, lhs, rhs, sp), _join(ls, rs)  # type: ignore[arg-type]
        if isinstance(e, A.ECompare):
            self.ctx.err(e.span, "a comparison can only be the first argument of `where`")
        if isinstance(e, A.ECall):
            return self.call(e, env, stack, at)
        self.ctx.err(sp, "unsupported expression")  # pragma: no cover

    def call(
        self, e: A.ECall, env: dict[str, tuple[Expr, str, int]], stack: tuple[str, ...], at: Span | None
    ) -> tuple[Expr, str]:
        fn = e.fn.value
        sp = at or e.span
        if fn in self.ctx.defs or (fn in self.ctx.std_defs and fn not in ARITY):
            return self.expand(e, env, stack, at)
        if fn not in ARITY:
            self.unknown_function(e.fn)
        for a in e.args:
            if a.key is not None:
                self.ctx.err(a.key.span, f"`{fn}` takes no keyword arguments")
        n = ARITY[fn]
        if len(e.args) != n:
            self.ctx.err(e.fn.span, f"`{fn}` takes {n} argument{'s' if n != 1 else ''}, got {len(e.args)}")
        if fn == "where":
            cond = e.args[0].value
            if not isinstance(cond, A.ECompare):
                self.ctx.err(cond.span, "the condition of `where` must be a comparison (< <= > >= == !=)")
            cl, cls_ = self.conv(cond.lhs, env, stack, at)
            cr, crs = self.conv(cond.rhs, env, stack, at)
            then, ts = self.conv(e.args[1].value, env, stack, at)
            other, os_ = self.conv(e.args[2].value, env, stack, at)
            c = Compare(cond.op, cl, cr, at or cond.span)
            return Where(c, then, other, sp), _join(cls_, crs, ts, os_)
        args = [self.conv(a.value, env, stack, at) for a in e.args]
        if fn in REDUCTIONS:
            arg, shape = args[0]
            if shape == SCALAR:
                self.ctx.err(
                    e.fn.span,
                    f"`{fn}` reduces over the channel axis, but its argument is already a per-token scalar",
                )
            return Reduce(fn, arg, sp), SCALAR  # type: ignore[arg-type]
        return Call(fn, tuple(a for a, _ in args), sp), _join(*(s for _, s in args))

    def expand(
        self, e: A.ECall, env: dict[str, tuple[Expr, str, int]], stack: tuple[str, ...], at: Span | None
    ) -> tuple[Expr, str]:
        fn = e.fn.value
        user = fn in self.ctx.defs
        d = self.ctx.defs[fn] if user else self.ctx.std_defs[fn]
        key = f"def {fn}"
        if key in stack:
            self.ctx.err(e.fn.span, f"recursive definition of `{fn}`")
        pnames = tuple(p.name.value for p in d.params)
        n = len(pnames)
        positional = [a for a in e.args if a.key is None]
        if len(positional) > n:
            sig = f" ({', '.join(pnames)})" if pnames else ""
            self.ctx.err(e.fn.span, f"`{fn}` takes {n} argument{'s' if n != 1 else ''}{sig}, got {len(e.args)}")
        bound = self.ctx.bind(e.args, pnames, (), fn, e.fn.span)
        missing = [p for p in pnames if p not in bound]
        if missing:
            sig = ", ".join(pnames)
            self.ctx.err(
                e.fn.span,
                f"`{fn}` takes {n} argument{'s' if n != 1 else ''} ({sig}), got {len(e.args)}; "
                f"`{missing[0]}` is missing",
            )
        local: dict[str, tuple[Expr, str, int]] = {}
        for p in d.params:
            a = bound[p.name.value]
            before = self.nodes
            val, shape = self.conv(a.value, env, stack, at)
            if p.interval is not None:
                rng = self.ctx.interval(p.interval)
                self.check_in(rng, val, p.name.value, a.value.span if at is None else at)
            local[p.name.value] = (val, shape, self.nodes - before)
        body_at = at if at is not None else (None if user else e.span)
        return self.conv(d.expr, local, (*stack, key), body_at)

    def check_in(self, rng: Range, val: Expr, pname: str, at: Span) -> None:
        x = _fold(val)
        if x is not None:
            if not rng.holds(x, x):
                self.ctx.err(at, f"{pname} must be in {rng}, got {fmt_num(x)}")
        elif isinstance(val, Var) and val.role == "gate":
            g = self.ctx.gates[val.name]
            if not rng.holds(g.low, g.high, g.low_open, g.high_open):
                gr = fmt_range(g.low, g.high, g.low_open, g.high_open)
                self.ctx.err(at, f"{pname} must be in {rng}, but gate `{g.name}` has range {gr}")

    def bias(self, st: A.BiasStmt) -> Bias:
        expr, _shape = self.conv(st.expr, {}, (), None)
        if not _depends_on_prediction(expr):
            self.ctx.err(st.expr.span, "the attentional bias does not depend on the memory's prediction (y or r)")
        for name in sorted(_gates_in(expr)):
            self.ctx.use_gate(name, "bias")
        return Bias(expr=expr, text=st.text, span=st.expr.span)


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
        return arith(e.op, a, b)
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
