"""emit (torch): print a chunk-IR graph as the body of a plain Python function over torch tensors.

Each value becomes one local variable laid out as [n?, *axes in ir.AXIS_ORDER]; broadcasting by axis name
becomes indexing with None, contractions become torch.einsum, elementwise sympy expressions become torch
expressions (after common-subexpression elimination).
"""

from __future__ import annotations

import sympy as sp

from . import ir
from .ir import Graph, Value
from .symbolic import logcosh, sigmoid, softplus


class TorchPrinter:
    """sympy -> torch source. `env` maps symbols to source strings."""

    def __init__(self, env: dict[sp.Symbol, str]):
        self.env = env

    def __call__(self, e: sp.Expr) -> str:
        return self.p(e)

    def num(self, e) -> str:
        if e in (sp.oo, sp.S.Infinity):
            return "math.inf"
        if e in (-sp.oo, sp.S.NegativeInfinity):
            return "(-math.inf)"
        v = float(e)
        return repr(v) if v >= 0 else f"({v!r})"

    def p(self, e: sp.Expr) -> str:  # noqa: C901 - one case per sympy node type
        p = self.p
        if e in self.env:
            return self.env[e]
        if e.is_number:  # any closed-form constant (pi, sqrt(2), ...) becomes a float literal
            return self.num(e)
        if isinstance(e, sp.Add):
            out = ""
            for a in e.args:
                coeff, rest = a.as_coeff_Mul()
                if coeff.is_Number and coeff < 0 and out:
                    out += " - " + p(-a)
                else:
                    out += (" + " if out else "") + p(a)
            return f"({out})"
        if isinstance(e, sp.Mul):
            num, den = [], []
            for f in e.args:
                if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                    den.append(p(f.base) if f.exp == -1 else p(sp.Pow(f.base, -f.exp)))
                else:
                    num.append(p(f))
            s = " * ".join(num) if num else "1.0"
            return f"({s} / ({' * '.join(den)}))" if den else f"({s})"
        if isinstance(e, sp.Pow):
            b, x = e.base, e.exp
            if x == sp.Rational(1, 2):
                return f"torch.sqrt({p(b)})"
            if x == -sp.Rational(1, 2):
                return f"torch.rsqrt({p(b)})"
            if x == 2:
                return f"torch.square({p(b)})"
            if x == -1:
                return f"(1.0 / {p(b)})"
            if b == sp.E:
                return f"torch.exp({p(x)})"
            return f"({p(b)} ** {p(x)})"
        simple = {sp.exp: "torch.exp", sp.log: "torch.log", sp.tanh: "torch.tanh", sp.erf: "torch.erf",
                  sp.Abs: "torch.abs", sp.sign: "torch.sign", sigmoid: "torch.sigmoid",
                  softplus: "torch.nn.functional.softplus", logcosh: "_logcosh", sp.cosh: "torch.cosh",
                  sp.sinh: "torch.sinh"}
        if e.func in simple:
            return f"{simple[e.func]}({p(e.args[0])})"
        if isinstance(e, (sp.Max, sp.Min)):
            fn = "torch.maximum" if isinstance(e, sp.Max) else "torch.minimum"
            clamp = "min" if isinstance(e, sp.Max) else "max"
            nums = [a for a in e.args if a.is_Number]
            rest = [a for a in e.args if not a.is_Number]
            out = p(rest[0])
            for a in rest[1:]:
                out = f"{fn}({out}, {p(a)})"
            for a in nums:
                out = f"torch.clamp({out}, {clamp}={self.num(a)})"
            return out
        if isinstance(e, sp.Heaviside):
            return f"({p(e.args[0])} > 0).to(_dt)"
        if isinstance(e, sp.Piecewise):
            return self.piecewise(list(e.args))
        if isinstance(e, sp.core.relational.Relational):
            op = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}[e.rel_op]
            return f"({p(e.lhs)} {op} {p(e.rhs)})"
        if isinstance(e, sp.And):
            return "(" + " & ".join(p(a) for a in e.args) + ")"
        if isinstance(e, sp.Or):
            return "(" + " | ".join(p(a) for a in e.args) + ")"
        if e is sp.true:
            return "True"
        raise NotImplementedError(f"no torch printing for {e.func}: {e}")

    def piecewise(self, pieces: list) -> str:
        (val, cond), rest = pieces[0], pieces[1:]
        if cond is sp.true or not rest:
            return self.p(val)
        a = self.p(val)
        b = self.piecewise(rest)
        if val.is_Number:
            a = f"_t({a})"
        return f"torch.where({self.p(cond)}, {a}, {b})"


def _is_alias(v: Value) -> bool:
    """A rename that moves no data (the stored axis order is unchanged) is just another name."""
    if not isinstance(v.op, ir.Rename):
        return False
    mapping = dict(v.op.mapping)
    return tuple(mapping.get(x, x) for x in v.args[0].axes) == v.axes


def _name(v: Value) -> str:
    """Inputs keep their own names (they are the function's parameters); other values are v<id>."""
    while _is_alias(v):
        v = v.args[0]
    if isinstance(v.op, ir.Input):
        return v.op.name
    return f"v{v.id}"


def _align(v: Value, out_axes: tuple[str, ...], out_batched: bool) -> str:
    """Index expression broadcasting v's layout to [n?, *out_axes]."""
    if isinstance(v.op, ir.Const):
        return repr(v.op.value)
    if isinstance(v.op, ir.Size):
        return f"_size_{v.op.axis}"
    if v.axes == out_axes and (v.batched == out_batched or not v.batched and not v.axes):
        return _name(v)
    if not v.batched and len(v.axes) == len(out_axes):
        return _name(v)
    idx = [":" if a in v.axes else "None" for a in out_axes]
    if v.batched:
        idx = [":"] + idx
    if all(i == ":" for i in idx):
        return _name(v)
    return f"{_name(v)}[{', '.join(idx)}]"


def _dim(v: Value, axis: str) -> int:
    return v.axes.index(axis) + (1 if v.batched else 0)


def _decayed_product(v: Value) -> list[str]:
    """ir.DecayedProduct exactly, through the (t, s, c) tile e^{min(a − b, 0)} ⊙ mask (the torch programs may hold
    it; the Triton kernels never do). The clamp only touches entries the mask zeroes."""
    x, y, a, b, mask = v.args
    triple = ir.canonical({"t", "s", ir.decay_channel(v)})
    batched = any(z.batched for z in (x, y, a, b))
    nm = _name(v)
    exponent = f"{_align(a, triple, batched)} - {_align(b, triple, batched)}"
    terms = [("n" if z.batched else "") + "".join(z.axes) for z in (x, y)]
    terms.append(("n" if batched else "") + "".join(triple))
    out = ("n" if v.batched else "") + "".join(v.axes)
    return [f"{nm}_pair = torch.exp(torch.clamp({exponent}, max=0.0)) * {_align(mask, triple, batched)}",
            f"{nm} = torch.einsum('{','.join(terms)}->{out}', {_name(x)}, {_name(y)}, {nm}_pair)"]


def _line(v: Value) -> list[str]:
    op, name = v.op, _name(v)
    if isinstance(op, ir.Input):
        return []
    if isinstance(op, ir.Const):
        return [f"{name} = _t({op.value!r})"]
    if isinstance(op, ir.Size):
        return []  # always inlined as _size_<axis>
    if isinstance(op, ir.Mask):
        if op.kind == "end":
            return [f"{name} = _mask_end(_size_t, chunk_size, _dt, _dev)"]
        return [f"{name} = _mask_{op.kind}(_size_t, _dt, _dev)"]
    if isinstance(op, ir.Elementwise):
        syms = ir.arg_symbols(len(v.args))
        temps, (expr,) = sp.cse([op.expr], symbols=sp.numbered_symbols("_c"))
        env = {s: _align(a, v.axes, v.batched) for s, a in zip(syms, v.args)}
        lines = []
        for t, val in temps:
            lines.append(f"{t} = {TorchPrinter(env)(val)}")
            env[t] = str(t)
        lines.append(f"{name} = {TorchPrinter(env)(expr)}")
        return lines
    if isinstance(op, ir.Einsum):
        terms = [("n" if a.batched else "") + "".join(a.axes) for a in v.args]
        out = ("n" if v.batched else "") + "".join(v.axes)
        args = ", ".join(_name(a) for a in v.args)
        return [f"{name} = torch.einsum('{','.join(terms)}->{out}', {args})"]
    if isinstance(op, ir.LogSumExp):
        return [f"{name} = torch.logsumexp({_name(v.args[0])}, dim={_dim(v.args[0], op.axis)})"]
    if isinstance(op, ir.Cumsum):
        d = _dim(v.args[0], op.axis)
        src = _name(v.args[0])
        if op.reverse:
            return [f"{name} = {src}.flip({d}).cumsum({d}).flip({d})"]
        return [f"{name} = {src}.cumsum({d})"]
    if isinstance(op, ir.Rename):
        if _is_alias(v):
            return []
        a = v.args[0]
        mapping = dict(op.mapping)
        renamed = [mapping.get(x, x) for x in a.axes]
        perm = [renamed.index(x) for x in v.axes]
        if perm == sorted(perm):
            return [f"{name} = {_name(a)}"]
        off = 1 if a.batched else 0
        full = ([0] if a.batched else []) + [p + off for p in perm]
        return [f"{name} = {_name(a)}.permute({', '.join(map(str, full))})"]
    if isinstance(op, ir.TriInverse):
        return [f"{name} = _tri_inverse({_name(v.args[0])})"]
    if isinstance(op, ir.DecayedProduct):
        return _decayed_product(v)
    if isinstance(op, ir.Broadcast):
        a = v.args[0]
        sizes = (["_N"] if v.batched else []) + [f"_size_{x}" for x in v.axes]
        if isinstance(a.op, ir.Const):
            return [f"{name} = torch.full(({', '.join(sizes)},), {a.op.value!r}, dtype=_dt, device=_dev)"]
        src = _align(a, v.axes, v.batched)
        if not a.batched and v.batched:
            src = f"{_name(a)}[None]" if not a.axes else f"{src}[None]"
        return [f"{name} = {src}.expand({', '.join(sizes)})"]
    raise TypeError(op)


def emit_function(graph: Graph, fname: str, input_order: list[str], output_order: list[str], doc: str = "") -> str:
    """Python source of `def fname(*inputs, chunk_size) -> tuple(outputs)` computing the graph with torch
    (chunk_size: the C the sequence is cut into; a shorter slice is a sequence's short last chunk)."""
    params = list(input_order)
    for p_ in params:
        if not p_.isidentifier():
            raise ValueError(f"input name {p_!r} is not an identifier")
    body = []
    lead = input_order[0]
    body.append(f"_dt, _dev, _N = {lead}.dtype, {lead}.device, {lead}.shape[0]")
    body.append("")
    body.append("def _t(x):")
    body.append("    return torch.tensor(x, dtype=_dt, device=_dev)")
    body.append("")
    used_axes = set()
    for v in graph.values:
        used_axes |= set(v.axes)
        if isinstance(v.op, ir.Size):
            used_axes.add(v.op.axis)
        if isinstance(v.op, (ir.Mask,)):
            used_axes.add("t")
    # axis lengths come from the inputs: s and u are token axes like t, g is hidden like h, o and i are D
    sources = {"t": "t", "s": "t", "u": "t", "o": "oi", "i": "io", "h": "hg", "g": "gh"}
    for axis in ir.AXIS_ORDER:
        if axis not in used_axes:
            continue
        holder = None
        for src_axis in sources[axis]:
            holder = next((graph.inputs[n] for n in input_order if src_axis in graph.inputs[n].axes), None)
            if holder is not None:
                break
        if holder is None:
            raise ValueError(f"no input carries the length of axis {axis}")
        body.append(f"_size_{axis} = {holder.op.name}.shape[{_dim(holder, src_axis)}]")
    for v in graph.values:
        lines = _line(v)
        if lines and v.hint and not isinstance(v.op, ir.Mask):
            lines[-1] += f"  # {v.hint}"
        body.extend(lines)
    outs = ", ".join(_name(graph.outputs[n]) for n in output_order)
    body.append(f"return ({outs}{',' if len(output_order) == 1 else ''})")
    header = f"def {fname}({', '.join(params)}, *, chunk_size):"
    if doc:
        header += f'\n    """{doc}"""'
    return header + "\n" + "\n".join("    " + line for line in "\n".join(body).splitlines()) + "\n"


__all__ = ["TorchPrinter", "emit_function"]
