"""The chunk IR: a dataflow graph of tile operations over one chunk of one head (batched over heads).

Every value carries named axes instead of positions, so broadcasting, contraction and their adjoints are
unambiguous:

  t, s, u   chunk token axes (size C; s and u are second and third copies for C×C and C×C×C tiles)
  o, i      the memory's output and input channel axes (size D)
  g, h      hidden axes (size expansion·D)

A value is stored with its axes in AXIS_ORDER, after an implicit leading batch axis n (batch × heads) when
`batched`. Ops:

  Input(name)                  a program input
  Const(value)                 a scalar constant
  Size(axis)                   the runtime length of an axis (a scalar)
  Mask(kind)                   causal (t, s: t >= s), strict (t, s: t > s), first (t: t == 0), last (t: the
                               chunk's last real token), end (t: the last token of a complete chunk; all zero in a
                               sequence's short last chunk)
  Elementwise(expr, args)      a sympy expression over placeholder symbols, broadcast by axis name
  Einsum(args, axes)           product of the args summed over every axis not in `axes`
  LogSumExp(arg, axis)
  Cumsum(arg, axis, reverse)   inclusive cumulative sum along a token axis
  Rename(arg, mapping)         relabel axes (no data movement beyond a transpose)
  Broadcast(arg, axes)         materialise a value over more axes
  TriInverse(a)                (I + A)⁻¹ for A (t, s) strictly lower triangular (its diagonal and upper part are
                               never read): a unit lower-triangular (t, s) tile

The same graph is emitted to torch (emit_torch) and, later, to Triton; `grad` differentiates it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp

AXIS_ORDER = ("t", "s", "u", "o", "g", "h", "i")
TOKEN_AXES = ("t", "s", "u")


def canonical(axes) -> tuple[str, ...]:
    axes = set(axes)
    unknown = axes - set(AXIS_ORDER)
    if unknown:
        raise ValueError(f"unknown axes {sorted(unknown)}")
    return tuple(a for a in AXIS_ORDER if a in axes)


@dataclass(frozen=True)
class Input:
    name: str


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Size:
    axis: str


@dataclass(frozen=True)
class Mask:
    kind: str  # causal | strict | first | last | end


@dataclass(frozen=True)
class Elementwise:
    expr: sp.Expr  # over the symbols a0, a1, ... standing for args in order


@dataclass(frozen=True)
class Einsum:
    pass


@dataclass(frozen=True)
class LogSumExp:
    axis: str


@dataclass(frozen=True)
class Cumsum:
    axis: str
    reverse: bool = False


@dataclass(frozen=True)
class Rename:
    mapping: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Broadcast:
    pass


@dataclass(frozen=True)
class TriInverse:
    """The inverse of a unit lower-triangular matrix I + A: the UT transform that gives a chunk's exact
    delta-rule signals (mirasc.chunkform). It depends on no state, so it is computed apart from the state pass."""


@dataclass(frozen=True)
class DecayedProduct:
    """Channel decay between two tokens, applied pair by pair: args (x, y, a, b, mask), with a (t, c) and b (s, c)
    the cumulative log-decays up to token t and token s in channel c. The value is the sum, over the one axis of
    (t, s, c) the result lacks, of x · y · e^{a[t, c] − b[s, c]} · mask[t, s], where x and y each hold two of the
    three axes (scores x[t, c] y[s, c] summed over c; or a (t, s) matrix applied to y[s, c] or x[t, c]).

    The mask is causal or strict, so wherever it is nonzero the decay runs forward (a[t, c] ≤ b[s, c]) and the
    exponent is at most 0: however strongly a channel decays, nothing overflows. The factored form
    e^{a[t, c]} e^{−b[s, c]} (two matrix products) overflows once a chunk decays by more than ~88 in log space, and
    the pairwise tile e^{a[t, c] − b[s, c]} holds C·C·D numbers; this op is neither (see docs/compiler.md)."""


def decay_channel(v: Value) -> str:
    """The channel axis c of a DecayedProduct (its log-decays' axis besides t and s)."""
    (chan,) = [ax for ax in v.args[2].axes if ax != "t"]
    return chan


Op = (Input | Const | Size | Mask | Elementwise | Einsum | LogSumExp | Cumsum | Rename | Broadcast | TriInverse
      | DecayedProduct)


@dataclass(eq=False)
class Value:
    id: int
    op: Op
    args: tuple[Value, ...]
    axes: tuple[str, ...]
    batched: bool
    hint: str = ""

    def __repr__(self) -> str:
        return f"%{self.id}{list(self.axes)}"


def arg_symbols(n: int) -> tuple[sp.Symbol, ...]:
    return tuple(sp.Symbol(f"a{j}", real=True) for j in range(n))


@dataclass
class Graph:
    """An SSA graph. Values are appended in topological order; `outputs` names the results."""

    values: list[Value] = field(default_factory=list)
    inputs: dict[str, Value] = field(default_factory=dict)
    outputs: dict[str, Value] = field(default_factory=dict)
    _memo: dict = field(default_factory=dict)

    # -- construction (with hash-consing, so equal subexpressions are built once)
    def _add(self, op: Op, args: tuple[Value, ...], axes, batched: bool, hint: str = "") -> Value:
        axes = canonical(axes)
        key = (op, tuple(a.id for a in args), axes, batched)
        if not isinstance(op, Input) and key in self._memo:
            return self._memo[key]
        v = Value(len(self.values), op, args, axes, batched, hint)
        self.values.append(v)
        self._memo[key] = v
        return v

    def input(self, name: str, axes, batched: bool = True) -> Value:
        if name in self.inputs:
            raise ValueError(f"duplicate input {name}")
        v = self._add(Input(name), (), axes, batched, name)
        self.inputs[name] = v
        return v

    def const(self, value: float) -> Value:
        return self._add(Const(float(value)), (), (), False)

    def size(self, axis: str) -> Value:
        return self._add(Size(axis), (), (), False)

    def mask(self, kind: str) -> Value:
        axes = {"causal": ("t", "s"), "strict": ("t", "s"), "first": ("t",), "last": ("t",), "end": ("t",)}[kind]
        return self._add(Mask(kind), (), axes, False, kind)

    def ew(self, fn: Callable[..., sp.Expr] | sp.Expr, *args: Value, hint: str = "") -> Value:
        """Elementwise: `fn` receives one sympy symbol per arg (or is an expression over a0, a1, ...)."""
        syms = arg_symbols(len(args))
        expr = fn(*syms) if callable(fn) else fn
        if not isinstance(expr, sp.Basic):
            expr = sp.Float(expr)  # a Python number
        consts = {s: sp.Float(a.op.value) for s, a in zip(syms, args) if isinstance(a.op, Const)}
        if consts:  # fold constants into the expression
            expr = expr.xreplace(consts)
            keep = [(s, a) for s, a in zip(syms, args) if s not in consts]
            fresh = arg_symbols(len(keep))
            expr = expr.xreplace({s: f for (s, _), f in zip(keep, fresh)})
            syms, args = fresh, tuple(a for _, a in keep)
        if expr.is_number:
            return self.const(float(expr))
        # an elementwise expression that is one of its args is that arg
        for s, a in zip(syms, args):
            if expr == s:
                return a
        axes = set().union(*(a.axes for a in args)) if args else set()
        return self._add(Elementwise(expr), args, axes, any(a.batched for a in args), hint)

    def einsum(self, axes, *args: Value, hint: str = "") -> Value:
        axes = canonical(axes)
        have = set().union(*(a.axes for a in args))
        if not set(axes) <= have:
            raise ValueError(f"einsum output axes {axes} not in operands {have}")
        if len(args) == 1 and args[0].axes == axes:
            return args[0]
        return self._add(Einsum(), args, axes, any(a.batched for a in args), hint)

    def sum(self, x: Value, *over: str) -> Value:
        return self.einsum([a for a in x.axes if a not in over], x)

    def logsumexp(self, x: Value, axis: str) -> Value:
        return self._add(LogSumExp(axis), (x,), [a for a in x.axes if a != axis], x.batched)

    def cumsum(self, x: Value, axis: str, reverse: bool = False) -> Value:
        if axis not in x.axes:
            raise ValueError("cumsum along an axis the value does not have")
        return self._add(Cumsum(axis, reverse), (x,), x.axes, x.batched)

    def rename(self, x: Value, **mapping: str) -> Value:
        mapping = {k: v for k, v in mapping.items() if k in x.axes and k != v}
        if not mapping:
            return x
        axes = [mapping.get(a, a) for a in x.axes]
        if len(set(axes)) != len(axes):
            raise ValueError(f"rename {mapping} collides on {x.axes}")
        return self._add(Rename(tuple(sorted(mapping.items()))), (x,), axes, x.batched)

    def broadcast(self, x: Value, axes, batched: bool = True) -> Value:
        axes = canonical(set(axes) | set(x.axes))
        if axes == x.axes and x.batched == batched:
            return x
        return self._add(Broadcast(), (x,), axes, batched or x.batched)

    def tri_inverse(self, a: Value) -> Value:
        """(I + A)⁻¹ for A (t, s) strictly lower triangular (only its strictly lower part is read)."""
        if a.axes != ("t", "s"):
            raise ValueError(f"tri_inverse: the matrix must have axes (t, s), got {a.axes}")
        return self._add(TriInverse(), (a,), a.axes, a.batched)

    def decayed_product(self, axes, x: Value, y: Value, a: Value, b: Value, mask: Value) -> Value:
        """DecayedProduct onto `axes` (two of t, s and the channel axis of a and b)."""
        (chan,) = [ax for ax in a.axes if ax != "t"]
        triple = {"t", "s", chan}
        if set(a.axes) != {"t", chan} or set(b.axes) != {"s", chan} or set(mask.axes) != {"t", "s"}:
            raise ValueError(f"decayed_product: log-decays (t, c), (s, c) and a (t, s) mask, got {a.axes}, {b.axes}, "
                             f"{mask.axes}")
        axes = canonical(axes)
        pairs = {frozenset(x.axes), frozenset(y.axes), frozenset(axes)}
        if len(axes) != 2 or not set(axes) <= triple or len(pairs) != 3 or not all(p <= triple for p in pairs):
            raise ValueError(f"decayed_product: x, y and the result must hold the three pairs of {sorted(triple)}, "
                             f"got {x.axes}, {y.axes} -> {axes}")
        return self._add(DecayedProduct(), (x, y, a, b, mask), axes, any(v.batched for v in (x, y, a, b)))

    def select(self, x: Value, which: str) -> Value:
        """Row `which` ('first' or 'last') of a token-indexed value, dropping the t axis."""
        return self.einsum([a for a in x.axes if a != "t"], x, self.mask(which))

    # -- inspection
    def dump(self) -> str:
        """A readable listing of the graph (mirasc explain --dump-ir)."""
        lines = []
        for v in self.values:
            args = ", ".join(f"%{a.id}" for a in v.args)
            op = v.op
            if isinstance(op, Elementwise):
                desc = f"ew[{op.expr}]({args})"
            elif isinstance(op, Input):
                desc = f"input {op.name}"
            else:
                desc = f"{type(op).__name__.lower()}{_op_params(op)}({args})"
            lines.append(f"  %{v.id:<4} {''.join(v.axes) or '·':<5} = {desc}" + (f"   # {v.hint}" if v.hint else ""))
        lines.append("  outputs: " + ", ".join(f"{k}=%{v.id}" for k, v in self.outputs.items()))
        return "\n".join(lines)


def _op_params(op: Op) -> str:
    if isinstance(op, Const):
        return f" {op.value!r}"
    if isinstance(op, (Size, LogSumExp)):
        return f" {op.axis}"
    if isinstance(op, Mask):
        return f" {op.kind}"
    if isinstance(op, Cumsum):
        return f" {op.axis}{' reverse' if op.reverse else ''}"
    if isinstance(op, Rename):
        return " " + ",".join(f"{a}->{b}" for a, b in op.mapping)
    return ""


def prune(graph: Graph) -> Graph:
    """Dead-code elimination: a new graph with only the values the outputs need (inputs always kept)."""
    live: set[int] = set()
    stack = list(graph.outputs.values())
    while stack:
        v = stack.pop()
        if v.id in live:
            continue
        live.add(v.id)
        stack.extend(v.args)
    return rebuild(graph, lambda v: v.id in live or isinstance(v.op, Input))


def rebuild(graph: Graph, keep: Callable[[Value], bool], replace: dict[int, Value] | None = None) -> Graph:
    """Copy the kept values into a fresh graph (renumbered, re-hash-consed)."""
    new = Graph()
    mapping: dict[int, Value] = {}
    replace = replace or {}
    for v in graph.values:
        if not keep(v):
            continue
        if v.id in replace:
            mapping[v.id] = mapping[replace[v.id].id]
            continue
        args = tuple(mapping[a.id] for a in v.args)
        if isinstance(v.op, Input):
            nv = new.input(v.op.name, v.axes, v.batched)
        else:
            nv = new._add(v.op, args, v.axes, v.batched, v.hint)
        mapping[v.id] = nv
    new.outputs = {k: mapping[v.id] for k, v in graph.outputs.items()}
    return new
