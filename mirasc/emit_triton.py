"""emit (Triton): print a chunk-IR graph as the body of a Triton kernel over one chunk of one head.

A kernel program owns one row n (batch x head) and loops over its chunks, so every IR value is a register
tile shaped by its axes in ir.AXIS_ORDER (no batch axis): token axes have the constexpr length C, channel
axes D, hidden axes HID. The last chunk may be partial: its token tiles are loaded masked (q, k, v as 0,
gates as 1, which keeps every intermediate finite), and the causal structure of the chunk program makes
the padded rows invisible to the real ones; `last` means the last real token.

Contractions become tl.dot where both operands are 2-D and the constexpr sizes allow it (USE_DOT), and a
broadcast product with tl.sum otherwise; elementwise sympy expressions become tl expressions.
"""

from __future__ import annotations

import sympy as sp

from . import ir
from .emit_torch import TorchPrinter
from .ir import Graph, Value
from .symbolic import logcosh, sigmoid, softplus

SIZE = {"t": "C", "s": "C", "u": "C", "o": "D", "i": "D", "h": "HID", "g": "HID"}
OFFS = {a: f"offs_{a}" for a in ir.AXIS_ORDER}


class TritonPrinter(TorchPrinter):
    """sympy -> Triton. Only core tl functions: no libdevice, no inline asm (the interpreter rejects them)."""

    FUNCS = {sp.exp: "tl.exp", sp.log: "tl.log", sp.Abs: "tl.abs", sp.erf: "tl.math.erf", sigmoid: "tl.sigmoid"}

    def p(self, e: sp.Expr) -> str:  # noqa: C901 - one case per node type
        p = self.p
        if e in self.env:
            return self.env[e]
        if e.is_number:
            return self.num(e)
        if e.func in self.FUNCS:
            return f"{self.FUNCS[e.func]}({p(e.args[0])})"
        if e.func == sp.tanh:  # tanh(x) = 2 sigmoid(2x) - 1
            return f"(2.0 * tl.sigmoid(2.0 * {p(e.args[0])}) - 1.0)"
        if e.func == sp.sign:
            x = p(e.args[0])
            return f"tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0))"
        if e.func == softplus:
            x = p(e.args[0])
            return f"tl.where({x} > 20.0, {x}, tl.log(1.0 + tl.exp(tl.minimum({x}, 20.0))))"
        if e.func == logcosh:
            x = p(e.args[0])
            return f"(tl.abs({x}) + tl.log(1.0 + tl.exp(-2.0 * tl.abs({x}))) - 0.6931471805599453)"
        if isinstance(e, sp.Pow):
            b, x = e.base, e.exp
            if x == sp.Rational(1, 2):
                return f"tl.sqrt({p(b)})"
            if x == -sp.Rational(1, 2):
                return f"(1.0 / tl.sqrt({p(b)}))"
            if x.is_Integer and 0 < int(x) <= 4:
                base = p(b)
                return "(" + " * ".join([base] * int(x)) + ")"
            if x == -1:
                return f"(1.0 / {p(b)})"
            if b == sp.E:
                return f"tl.exp({p(x)})"
            # general power of a positive base (every non-integer power the IR builds is of one)
            return f"tl.exp({p(x)} * tl.log({p(b)}))"
        if isinstance(e, (sp.Max, sp.Min)):
            fn = "tl.maximum" if isinstance(e, sp.Max) else "tl.minimum"
            out = p(e.args[0])
            for a in e.args[1:]:
                out = f"{fn}({out}, {p(a)})"
            return out
        if isinstance(e, sp.Heaviside):
            return f"tl.where({p(e.args[0])} > 0, 1.0, 0.0)"
        return super().p(e)

    def piecewise(self, pieces: list) -> str:
        (val, cond), rest = pieces[0], pieces[1:]
        if cond is sp.true or not rest:
            return self.p(val)
        return f"tl.where({self.p(cond)}, {self.p(val)}, {self.piecewise(rest)})"


def name(v: Value) -> str:
    if isinstance(v.op, ir.Input):
        return v.op.name
    return f"v{v.id}"


def align(v: Value, out_axes: tuple[str, ...]) -> str:
    """v indexed with None for every axis of out_axes it lacks (same relative order: both canonical)."""
    if isinstance(v.op, ir.Const):
        return repr(v.op.value)
    if isinstance(v.op, ir.Size):
        return SIZE[v.op.axis] if v.op.axis not in ir.TOKEN_AXES else "nv"
    if v.axes == out_axes or not v.axes:
        return name(v)
    return f"{name(v)}[{', '.join(':' if a in v.axes else 'None' for a in out_axes)}]"


def _shape(axes) -> str:
    return "(" + ", ".join(SIZE[a] for a in axes) + ("," if len(axes) == 1 else "") + ")"


def _dot(v: Value) -> str | None:
    """tl.dot source for a 2-operand, 2-D contraction over one axis, else None."""
    if len(v.args) != 2 or len(v.axes) != 2:
        return None
    a, b = v.args
    if len(a.axes) != 2 or len(b.axes) != 2:
        return None
    shared = set(a.axes) & set(b.axes)
    if len(shared) != 1 or shared & set(v.axes):
        return None
    (kax,) = shared
    x_ax = next(x for x in a.axes if x != kax)
    y_ax = next(x for x in b.axes if x != kax)
    if {x_ax, y_ax} != set(v.axes):
        return None
    lhs = name(a) if a.axes == (x_ax, kax) else f"tl.trans({name(a)})"
    rhs = name(b) if b.axes == (kax, y_ax) else f"tl.trans({name(b)})"
    out = f"tl.dot({lhs}, {rhs}, input_precision=\"ieee\")"
    return out if v.axes == (x_ax, y_ax) else f"tl.trans({out})"


def _einsum(v: Value) -> list[str]:
    union = ir.canonical(set().union(*(a.axes for a in v.args)))
    prod = " * ".join(align(a, union) for a in v.args)
    summed = [j for j, a in enumerate(union) if a not in v.axes]
    expr = f"({prod})"
    for j in reversed(summed):
        expr = f"tl.sum({expr}, axis={j})"
    if set(v.axes) == set(union) and len(v.args) == 1:
        expr = name(v.args[0])
    general = f"{name(v)} = {expr}"
    dot = _dot(v)
    if dot is None:
        return [general]
    return ["if USE_DOT:", f"    {name(v)} = {dot}", "else:", f"    {general}"]


def _tri_inverse(v: Value) -> list[str]:
    """(I + A)⁻¹ by substitution, one row at a time over register tiles: row r of the inverse is e_r minus the
    solved rows' share. (C steps of C x C work; correct for the interpreter and any chunk, not a tensor-core
    kernel yet.)"""
    nm, mat = name(v), name(v.args[0])
    return [f"{nm} = tl.where(offs_t[:, None] == offs_s[None, :], 1.0, 0.0).to(DTYPE)",
            f"for {nm}_r in range(1, C):",
            f"    {nm}_a = tl.sum(tl.where((offs_t[:, None] == {nm}_r) & (offs_s[None, :] < {nm}_r), {mat}, 0.0), "
            "axis=0)",
            f"    {nm}_u = tl.sum({nm}_a[:, None] * {nm}, axis=0)",
            f"    {nm} = tl.where(offs_t[:, None] == {nm}_r, {nm} - {nm}_u[None, :], {nm})"]


def line(v: Value) -> list[str]:
    op, nm = v.op, name(v)
    if isinstance(op, (ir.Input, ir.Size)):
        return []
    if isinstance(op, ir.Const):
        return [f"{nm} = {op.value!r}"]
    if isinstance(op, ir.Mask):
        if op.kind == "causal":
            return [f"{nm} = tl.where(offs_t[:, None] >= offs_s[None, :], 1.0, 0.0)"]
        if op.kind == "strict":
            return [f"{nm} = tl.where(offs_t[:, None] > offs_s[None, :], 1.0, 0.0)"]
        if op.kind == "first":
            return [f"{nm} = tl.where(offs_t == 0, 1.0, 0.0)"]
        if op.kind == "end":  # the last token of a complete chunk
            return [f"{nm} = tl.where((offs_t == nv - 1) & (nv == C), 1.0, 0.0)"]
        return [f"{nm} = tl.where(offs_t == nv - 1, 1.0, 0.0)"]
    if isinstance(op, ir.Elementwise):
        syms = ir.arg_symbols(len(v.args))
        temps, (expr,) = sp.cse([op.expr], symbols=sp.numbered_symbols("_c"))
        env = {s: align(a, v.axes) for s, a in zip(syms, v.args)}
        lines = []
        for t, val in temps:
            lines.append(f"{t} = {TritonPrinter(env)(val)}")
            env[t] = str(t)
        lines.append(f"{nm} = {TritonPrinter(env)(expr)}")
        if not any(isinstance(a.op, (ir.Input, ir.Elementwise, ir.Einsum, ir.Mask, ir.LogSumExp, ir.Cumsum,
                                     ir.Rename, ir.Broadcast, ir.TriInverse)) for a in v.args):
            lines.append(f"{nm} = tl.full({_shape(v.axes)}, {nm}, DTYPE)")
        return lines
    if isinstance(op, ir.Einsum):
        return _einsum(v)
    if isinstance(op, ir.LogSumExp):
        a = v.args[0]
        k = a.axes.index(op.axis)
        m = f"{nm}_max"
        expanded = f"{m}[{', '.join('None' if x == op.axis else ':' for x in a.axes)}]"
        return [f"{m} = tl.max({name(a)}, axis={k})",
                f"{nm} = {m} + tl.log(tl.sum(tl.exp({name(a)} - {expanded}), axis={k}))"]
    if isinstance(op, ir.Cumsum):
        a = v.args[0]
        return [f"{nm} = tl.cumsum({name(a)}, axis={a.axes.index(op.axis)}, reverse={op.reverse})"]
    if isinstance(op, ir.Rename):
        a = v.args[0]
        mapping = dict(op.mapping)
        renamed = [mapping.get(x, x) for x in a.axes]
        perm = [renamed.index(x) for x in v.axes]
        if perm == sorted(perm):
            return [f"{nm} = {name(a)}"]
        if len(perm) == 2:
            return [f"{nm} = tl.trans({name(a)})"]
        return [f"{nm} = tl.permute({name(a)}, ({', '.join(map(str, perm))}))"]
    if isinstance(op, ir.TriInverse):
        return _tri_inverse(v)
    if isinstance(op, ir.Broadcast):
        a = v.args[0]
        if isinstance(a.op, ir.Const):
            return [f"{nm} = tl.full({_shape(v.axes)}, {a.op.value!r}, DTYPE)"]
        return [f"{nm} = tl.broadcast_to({align(a, v.axes)}, {_shape(v.axes)})"]
    raise TypeError(op)


def body(graph: Graph) -> list[str]:
    out = []
    for v in graph.values:
        lines = line(v)
        if lines and v.hint and not isinstance(v.op, ir.Mask):
            lines[-1] += f"  # {v.hint}"
        out.extend(lines)
    return out


# ------------------------------------------------------------------------------------------------ memory access
def offsets(axes: tuple[str, ...], token_major: bool) -> str:
    """Element offsets of a tile inside one row n. Token inputs are [N, T, rest...] (t counts from the chunk's
    start c*C); everything else is [N, axes...] contiguous."""
    terms = []
    stride = "1"
    for a in reversed(axes):
        idx = "(c * C + offs_t)" if (a == "t" and token_major) else OFFS[a]
        terms.append(f"{align_index(idx, a, axes)} * {stride}" if stride != "1" else align_index(idx, a, axes))
        stride = ("T" if (a == "t" and token_major) else SIZE[a]) if stride == "1" else \
            f"{stride} * {'T' if (a == 't' and token_major) else SIZE[a]}"
    return " + ".join(reversed(terms)) if terms else "0"


def row_size(axes: tuple[str, ...], token_major: bool) -> str:
    parts = ["T" if (a == "t" and token_major) else SIZE[a] for a in axes]
    return " * ".join(parts) if parts else "1"


def align_index(idx: str, axis: str, axes: tuple[str, ...]) -> str:
    if len(axes) == 1:
        return idx
    return f"{idx}[{', '.join(':' if a == axis else 'None' for a in axes)}]"


def token_mask(axes: tuple[str, ...]) -> str | None:
    if "t" not in axes:
        return None
    return align_index("(offs_t < nv)", "t", axes)


def load(ptr: str, value: Value, token: bool, other: float = 0.0) -> str:
    off = offsets(value.axes, token)
    base = f"{ptr} + n * {row_size(value.axes, token)}"
    mask = token_mask(value.axes) if token else None
    if mask:
        return f"tl.load({base} + {off}, mask={mask}, other={other}).to(DTYPE)"
    return f"tl.load({base} + {off}).to(DTYPE)"


def store(ptr: str, axes: tuple[str, ...], token: bool, value: str) -> str:
    off = offsets(axes, token)
    base = f"{ptr} + n * {row_size(axes, token)}"
    mask = token_mask(axes) if token else None
    val = f"{value}.to({ptr}.dtype.element_ty)"
    if mask:
        return f"tl.store({base} + {off}, {val}, mask={mask})"
    return f"tl.store({base} + {off}, {val})"
