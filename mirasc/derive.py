"""derive: the attentional bias as sympy expressions, and its gradient with respect to the prediction y.

A per-token loss may contain reductions over the channel axis (sum, norm2). Each reduction is hoisted into
a scalar symbol R_k = sum_o e_k(o), so the loss becomes a scalar expression F(R_1, ..., R_m) and every e_k is
elementwise. The gradient dl/dy_o is then obtained by reverse mode over the reductions (`_grad`), which keeps
every piece elementwise or a reduction: the form the chunk IR computes. The residual r = y - v is the base
symbol, so d/dy at fixed v is d/dr.

Smooth surrogates (|x| -> sqrt(x^2 + eps) or log cosh(s x)/s, sign -> tanh(s x)) are substituted here, in
value positions only: a `where` condition keeps the exact function.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.printing.str import StrPrinter

from . import spec as S
from .symbolic import activation, diff, logcosh, sigmoid, softplus

# The derivation's own symbols are sympy Dummies: a gate may be called anything (`R1`, `D`, `r_bar`, ...) and its
# symbol, Symbol(name), is never equal to one of these, whatever the names.
R = sp.Dummy("r", real=True)  # the residual y - v, one channel
V = sp.Dummy("v", real=True)  # the value, one channel
NCH = sp.Dummy("D", positive=True, integer=True)  # number of channels (for sums of channel-constant terms)


@dataclass(frozen=True)
class Reduction:
    symbol: sp.Symbol
    body: sp.Expr  # elementwise: the reduction is sum over channels of body


@dataclass(frozen=True)
class LossDerivation:
    """The loss and dl/dy. Symbols: R (residual), V (value), one symbol per gate (channel gates are
    per-channel symbols, scalar gates per-token), reduction symbols defined in `reductions` (in order: a
    body refers only to earlier reductions), and adjoint symbols defined in `adjoints`."""

    loss: sp.Expr  # per-token scalar (a channel-wise bias is wrapped in a reduction)
    reductions: tuple[Reduction, ...]
    adjoints: tuple[tuple[sp.Symbol, sp.Expr], ...]  # scalar d loss / d R_k, in evaluation order
    grad: sp.Expr  # d loss / d y, elementwise
    gate_symbols: dict[str, sp.Symbol]
    channel_gates: frozenset[str]
    elementwise: bool  # loss = sum_o f(r_o, ...): then the Hessian is diagonal, d grad / d r

    def hessian_diagonal(self) -> sp.Expr | None:
        return diff(self.grad, R) if self.elementwise else None


class _Builder:
    def __init__(self, spec: S.Spec):
        self.spec = spec
        self.sur = spec.surrogates
        self.gate_symbols = {g.name: sp.Symbol(g.name, real=True) for g in spec.gates}
        self.channel = frozenset(g.name for g in spec.gates if g.kind == "channel")
        self.reductions: list[Reduction] = []

    # -- shape: does an expression vary along the channel axis (outside reductions)?
    def per_channel(self, e: sp.Expr) -> bool:
        chan = {R, V} | {self.gate_symbols[n] for n in self.channel}
        return bool(e.free_symbols & chan)

    def reduce(self, body: sp.Expr) -> sp.Symbol:
        for red in self.reductions:  # the same sum twice is one reduction
            if red.body == body:
                return red.symbol
        sym = sp.Dummy(f"R{len(self.reductions) + 1}", real=True)
        self.reductions.append(Reduction(sym, body))
        return sym

    def build(self, e: S.Expr, in_condition: bool = False) -> sp.Expr:
        b = self.build
        if isinstance(e, S.Num):
            return number(e.value)
        if isinstance(e, S.Var):
            if e.role == "r":
                return R
            if e.role == "v":
                return V
            if e.role == "y":
                return R + V
            return self.gate_symbols[e.name]
        if isinstance(e, S.Neg):
            return -b(e.arg, in_condition)
        if isinstance(e, S.BinOp):
            x, y = b(e.lhs, in_condition), b(e.rhs, in_condition)
            ops = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y, "/": lambda: x / y, "^": lambda: x**y}
            return ops[e.op]()
        if isinstance(e, S.Compare):
            x, y = b(e.lhs, True), b(e.rhs, True)
            return {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge, "==": sp.Eq, "!=": sp.Ne}[e.op](x, y)
        if isinstance(e, S.Where):
            return sp.Piecewise((b(e.then, in_condition), b(e.cond, True)), (b(e.otherwise, in_condition), True))
        if isinstance(e, S.Reduce):
            body = b(e.arg, in_condition)
            if e.fn == "sum":
                return self.reduce(body)
            return sp.sqrt(self.reduce(body**2))
        if isinstance(e, S.Call):
            return self.call(e.fn, [b(a, in_condition) for a in e.args], in_condition)
        raise TypeError(f"not an expression: {e!r}")

    def call(self, fn: str, args: list[sp.Expr], in_condition: bool) -> sp.Expr:
        x = args[0]
        if fn == "abs":
            if in_condition or self.sur.abs == "exact":
                return sp.Abs(x)
            if self.sur.abs == "sqrt":
                return sp.sqrt(x**2 + sp.Float(self.sur.abs_eps))
            s = sp.Float(self.sur.abs_sharpness)
            return logcosh(s * x) / s
        if fn == "sign":
            if in_condition or self.sur.sign == "exact":
                return sp.sign(x)
            return sp.tanh(sp.Float(self.sur.sign_sharpness) * x)
        simple = {"sqrt": sp.sqrt, "exp": sp.exp, "log": sp.log, "tanh": sp.tanh, "sigmoid": sigmoid,
                  "softplus": softplus}
        if fn in simple:
            return simple[fn](x)
        if fn == "pow":
            return x ** args[1]
        if fn == "min":
            return sp.Min(x, args[1])
        if fn == "max":
            return sp.Max(x, args[1])
        raise ValueError(f"unknown function {fn!r}")


def number(value: float) -> sp.Expr:
    """A spec number as an exact sympy number where it is short (0.5 -> 1/2), else a Float."""
    if value == float("inf"):
        return sp.oo
    if float(value).is_integer():
        return sp.Integer(int(value))
    if len(repr(value)) <= 6:
        return sp.Rational(repr(value))
    return sp.Float(value)


def _grad(loss: sp.Expr, reductions: list[Reduction], per_channel, reduce) -> tuple[list, sp.Expr]:
    """Reverse mode over the reductions: returns the scalar adjoints and d loss / d r (elementwise)."""
    adjoint: dict[sp.Symbol, sp.Expr] = {red.symbol: diff(loss, red.symbol) for red in reductions}
    order = list(reductions)
    adjoint_defs = []
    grad = sp.Integer(0)
    for k in range(len(order) - 1, -1, -1):
        red = order[k]
        bar_sym = sp.Dummy(f"{red.symbol.name}_bar", real=True)
        adjoint_defs.append((bar_sym, adjoint[red.symbol]))
        grad += bar_sym * diff(red.body, R)
        for earlier in order[:k]:
            partial = diff(red.body, earlier.symbol)
            if partial == 0:
                continue
            summed = reduce(partial) if per_channel(partial) else NCH * partial
            adjoint[earlier.symbol] = adjoint[earlier.symbol] + bar_sym * summed
    return adjoint_defs, grad


def derive_loss(spec: S.Spec) -> LossDerivation:
    b = _Builder(spec)
    expr = b.build(spec.bias.expr)
    elementwise = False
    if b.per_channel(expr):
        elementwise = not b.reductions
        expr = b.reduce(expr)
    adjoints, grad = _grad(expr, list(b.reductions), b.per_channel, b.reduce)
    # Adjoints created while walking may add reductions (sums of partials); they are evaluated before the
    # adjoint that uses them because every new reduction only depends on forward quantities.
    # Adjoints that refer to no reduction (a loss linear in a reduction, with a number or a per-token scalar
    # gate as its weight) are substituted away; a gradient that then refers to no reduction is elementwise,
    # with a diagonal Hessian.
    pending = {red.symbol for red in b.reductions} | {sym for sym, _ in adjoints}
    known = {sym: val for sym, val in adjoints if not (val.free_symbols & pending)}
    grad = grad.xreplace(known)
    adjoints = [(sym, val) for sym, val in adjoints if sym not in known]
    reduction_syms = {red.symbol for red in b.reductions} | {sym for sym, _ in adjoints}
    elementwise = not (grad.free_symbols & reduction_syms)
    if elementwise:
        adjoints = []
    return LossDerivation(
        loss=expr,
        reductions=tuple(b.reductions),
        adjoints=tuple(adjoints),
        grad=grad,
        gate_symbols=b.gate_symbols,
        channel_gates=b.channel,
        elementwise=elementwise,
    )


@dataclass(frozen=True)
class Derivation:
    spec: S.Spec
    loss: LossDerivation
    act: sp.Expr  # sigma(x)
    act_prime: sp.Expr
    act_second: sp.Expr
    x: sp.Symbol


def derive(spec: S.Spec) -> Derivation:
    x = sp.Symbol("x", real=True)
    act = activation(spec.memory.activation, x)
    d1 = diff(act, x)
    return Derivation(spec, derive_loss(spec), act, d1, diff(d1, x), x)


# ---------------------------------------------------------------------------------------------------------
# Printing (mirasc explain)
# ---------------------------------------------------------------------------------------------------------


def _fmt(e: sp.Expr, latex: bool) -> str:
    return sp.latex(e) if latex else sp.pretty(e, use_unicode=True)


def explain(d: Derivation, latex: bool = False) -> str:
    """A readable account of the derivation: loss, inner gradient, Hessian, activation, update rule."""
    s = d.spec
    ld = d.loss
    out = [f"model {s.name} ({s.file})", "", f"attentional bias: {s.bias.text}"]
    for red in ld.reductions:
        out.append(f"  {red.symbol.name} = Σ_channels {_inline(red.body, latex)}")
    out += ["  ℓ =", _indent(_fmt(ld.loss, latex))]
    for sym, val in ld.adjoints:
        out.append(f"  {sym.name} = ∂ℓ/∂{sym.name.removesuffix('_bar')} = {_inline(val, latex)}")
    out += ["", "inner gradient signal g = ∂ℓ/∂y (elementwise, r = y − v):", _indent(_fmt(ld.grad, latex))]
    h = ld.hessian_diagonal()
    if h is not None:
        out += ["", "∂²ℓ/∂y² (diagonal; used by the backward pass):", _indent(_fmt(h, latex))]
    else:
        out += ["", "∂²ℓ/∂y∂y: dense (the loss has reductions); the backward pass differentiates the graph above."]
    out += ["", *s.memory.explain(lambda e: _fmt(e, latex), (d.act, d.act_prime, d.act_second))]
    at = "α_t ⊙ W_(t−1)" if s.algorithm.gradient_at == "decayed" else "W_(t−1)"
    out += ["", f"update (per token; G_t = ∇_W ℓ(M(k_t; W), v_t) at W = {at}, per layer G = z̄ ⊗ x):",
            _update_text(s)]
    out += ["", *_chunk_text(d)]
    return "\n".join(out)


def _chunk_text(d: Derivation) -> list[str]:
    """The chunk form a spec gets (mirasc.chunkform) and what it computes."""
    from .chunkform import chunk_form

    form = chunk_form(d.spec, d.loss)
    head = f"chunkwise form (C = {d.spec.chunk_size}): {form.describe()}"
    if not form.exact:
        return [head, "  every gradient of a chunk at the chunk-start weights W';",
                "  P_t = e^{Λ_t} P' − Σ_{s≤t} e^{Λ_t − Λ_s} η_s G_s(W'),  Λ_t = Σ_{j≤t} log α_j  (Eq. 28)",
                "  reads: W_t = W' + κ ⊙ (P_t − P') via masked C×C score matmuls (TTT dual form);",
                "  the chunk's last token reads the boundary map of the end state. See docs/semantics.md."]
    lines = [head, "  equal to the per-token recurrence at every chunk size;",
             "  P_t = e^{Λ_t} P' − Σ_{s≤t} e^{Λ_t − Λ_s} η_s g_s ⊗ k_s,  Λ_t = Σ_{j≤t} log α_j"]
    if form.solves:
        lam = "Λ_t" if d.spec.algorithm.gradient_at == "decayed" else "Λ_(t−1)"
        lines += ["  with every token's gradient signal g_t at its own weights: (I + A) g = g(ŷ), ŷ_t the prediction",
                  f"  of the decayed chunk-start weights, A[t,s] = h_t e^{{{lam} − Λ_s}} η_s k_t·k_s (s < t,",
                  "  h = ∂²ℓ/∂y²), a unit lower-triangular C×C solve per chunk (the UT transform).",
                  "  See docs/semantics.md."]
    return lines


class _NamePrinter(StrPrinter):
    """str() of an expression with the derivation's Dummies printed by their names (r, not _r)."""

    def _print_Dummy(self, expr: sp.Dummy) -> str:
        return expr.name


def _inline(e: sp.Expr, latex: bool) -> str:
    return sp.latex(e) if latex else _NamePrinter().doprint(e)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _operand(o: S.Operand | None, default: str = "1") -> str:
    if o is None:
        return default
    return o.name if isinstance(o, S.GateRef) else f"{o.value:g}"


def _update_text(s: S.Spec) -> str:
    a = _operand(s.retention.decay)
    lr = _operand(s.algorithm.lr)
    core = s.algorithm.explain(a, _operand)
    m = s.retention.map
    if m is None:
        return core + ";  W_t = P_t"
    return m.explain(core, a, lr)


__all__ = ["Derivation", "LossDerivation", "Reduction", "derive", "derive_loss", "explain", "R", "V", "NCH"]
