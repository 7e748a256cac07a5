"""dotform: rewrite a chunk program's contractions into the shapes a tensor core takes.

The lowering writes contractions as einsums of any number of operands (the torch backend hands them to
torch.einsum, which picks an order). A GPU kernel wants each one to be a matrix product of two 2-D tiles
(`tl.dot`), or a product small enough to stay 2-D. `to_dot_form` rewrites every Einsum so that:

1. an operand whose axes are a subset of another operand's is multiplied into it elementwise first (an
   elementwise factor moves into the operand: Σ_i q[t,i]·a[t,i]·W[o,i] is (q⊙a)·Wᵀ);
2. what remains is contracted two operands at a time, each step keeping only the axes that the result or a
   later operand needs, the pair with the smallest product tile first (as opt_einsum's greedy path);
3. each step is then a 2-D × 2-D product over one shared axis (a dot), or a product whose tile has at most two
   axes (an outer product, a row scaling, a sum of a 2-D tile).

`product_tile_axes` says which axes a contraction's broadcast product spans; the Triton emitter refuses any
value (or product) with more than two axes (a (C, C, D) tile), naming it, rather than emit one.
"""

from __future__ import annotations

import itertools

from . import ir
from .ir import Graph, Value


def is_dot(v: Value) -> bool:
    """A contraction of two 2-D operands over one shared axis into the other two: a matrix product."""
    if not isinstance(v.op, ir.Einsum) or len(v.args) != 2 or len(v.axes) != 2:
        return False
    a, b = v.args
    if len(a.axes) != 2 or len(b.axes) != 2:
        return False
    shared = set(a.axes) & set(b.axes)
    return len(shared) == 1 and not (shared & set(v.axes)) and set(v.axes) == (set(a.axes) | set(b.axes)) - shared


def product_tile_axes(v: Value) -> tuple[str, ...]:
    """The axes of the broadcast product an einsum would form (a dot forms none: the tensor core sums)."""
    if is_dot(v):
        return ()
    return ir.canonical(set().union(*(a.axes for a in v.args)))


def _fold(graph: Graph, operands: list[Value]) -> list[Value]:
    """Multiply every operand whose axes lie within another's into that one (largest host first)."""
    ops = sorted(operands, key=lambda x: -len(x.axes))
    out: list[Value] = []
    for x in ops:
        host = next((j for j, h in enumerate(out) if set(x.axes) <= set(h.axes)), None)
        if host is None:
            out.append(x)
        else:
            out[host] = graph.ew(lambda p, q: p * q, out[host], x)
    return out


def _contract(graph: Graph, operands: list[Value], axes: tuple[str, ...]) -> Value:
    """The einsum of `operands` onto `axes`, as a chain of two-operand steps."""
    ops = _fold(graph, operands)
    while len(ops) > 1:
        best = None
        for j, k in itertools.combinations(range(len(ops)), 2):
            rest = [x for n, x in enumerate(ops) if n not in (j, k)]
            keep = set(axes).union(*(x.axes for x in rest)) if rest else set(axes)
            union = set(ops[j].axes) | set(ops[k].axes)
            out = ir.canonical(union & keep)
            shared = set(ops[j].axes) & set(ops[k].axes)
            dot = (len(ops[j].axes) == len(ops[k].axes) == 2 and len(shared) == 1 and len(out) == 2
                   and not shared & set(out))
            cost = (2 if dot else len(union), len(out))
            if best is None or cost < best[0]:
                best = (cost, j, k, out)
        _, j, k, out = best
        step = graph.einsum(out, ops[j], ops[k])
        ops = _fold(graph, [x for n, x in enumerate(ops) if n not in (j, k)] + [step])
    return graph.einsum(axes, ops[0])


def to_dot_form(graph: Graph) -> Graph:
    """A copy of `graph` in which every Einsum is rewritten as above (outputs and inputs unchanged)."""
    new = Graph()
    mapped: dict[int, Value] = {}
    for v in graph.values:
        args = tuple(mapped[a.id] for a in v.args)
        if isinstance(v.op, ir.Input):
            mapped[v.id] = new.input(v.op.name, v.axes, v.batched)
        elif isinstance(v.op, ir.Einsum):
            mapped[v.id] = _contract(new, list(args), v.axes)
            if not mapped[v.id].hint:
                mapped[v.id].hint = v.hint
        else:
            mapped[v.id] = new._add(v.op, args, v.axes, v.batched, v.hint)
    new.outputs = {k: mapped[v.id] for k, v in graph.outputs.items()}
    return ir.prune(new)


__all__ = ["is_dot", "product_tile_axes", "to_dot_form"]
