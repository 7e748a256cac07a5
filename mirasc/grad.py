"""grad: reverse-mode differentiation of the chunk IR.

`backprop` appends adjoint values to a graph; it serves twice: in `lower`, to back-propagate the inner
loss through the memory (the inner gradient), and here, to differentiate a whole chunk program (which then
contains second derivatives of the loss and the activations, again from sympy). Each rule keeps the
invariant that an adjoint's axes are a subset of its value's axes; a missing axis means "constant along it".
"""

from __future__ import annotations

import sympy as sp

from . import ir
from .ir import Graph, Value
from .symbolic import diff


def _ancestors(roots: list[Value]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        v = stack.pop()
        if v.id not in seen:
            seen.add(v.id)
            stack.extend(v.args)
    return seen


def _descendants(graph: Graph, roots: list[Value]) -> set[int]:
    seen = {r.id for r in roots}
    for v in graph.values:
        if any(a.id in seen for a in v.args):
            seen.add(v.id)
    return seen


def _ew_partial(graph: Graph, expr: sp.Expr, args: tuple[Value, ...], extra: Value) -> Value:
    """Elementwise value of `expr * extra`, where expr is over a0.. (args); only the args it uses are wired."""
    syms = ir.arg_symbols(len(args))
    used = [j for j, s in enumerate(syms) if s in expr.free_symbols]
    new_syms = ir.arg_symbols(len(used) + 1)
    expr = expr.xreplace({syms[j]: new_syms[n] for n, j in enumerate(used)})
    return graph.ew(expr * new_syms[-1], *(args[j] for j in used), extra)


def _reduce_to(graph: Graph, x: Value, axes: tuple[str, ...]) -> Value:
    extra = [a for a in x.axes if a not in axes]
    return graph.sum(x, *extra) if extra else x


def _rule(graph: Graph, v: Value, j: int, gbar: Value) -> Value | None:
    op = v.op
    a = v.args[j]
    if isinstance(op, ir.Elementwise):
        partial = diff(op.expr, ir.arg_symbols(len(v.args))[j])
        if partial == 0:
            return None
        return _reduce_to(graph, _ew_partial(graph, partial, v.args, gbar), a.axes)
    if isinstance(op, ir.Einsum):
        others = [x for k, x in enumerate(v.args) if k != j] + [gbar]
        have = set().union(*(x.axes for x in others))
        return graph.einsum([ax for ax in a.axes if ax in have], *others)
    if isinstance(op, ir.LogSumExp):
        return graph.ew(lambda x, out, g: sp.exp(x - out) * g, a, v, gbar)
    if isinstance(op, ir.Cumsum):
        full = graph.broadcast(gbar, gbar.axes + (op.axis,))
        return graph.cumsum(full, op.axis, reverse=not op.reverse)
    if isinstance(op, ir.Rename):
        inverse = {new: old for old, new in op.mapping}
        return graph.rename(gbar, **inverse)
    if isinstance(op, ir.Broadcast):
        return _reduce_to(graph, gbar, a.axes)
    raise TypeError(f"cannot differentiate {op}")


def add_all(graph: Graph, terms: list[Value]) -> Value:
    if len(terms) == 1:
        return terms[0]
    return graph.ew(lambda *xs: sp.Add(*xs), *terms)


def backprop(graph: Graph, seeds: dict[int, tuple[Value, Value]], wrt: list[Value]) -> dict[int, Value | None]:
    """Adjoints of `wrt` given adjoint seeds {value id: (value, adjoint)}; appends nodes to `graph`."""
    relevant = _descendants(graph, wrt) & _ancestors([v for v, _ in seeds.values()])
    pending: dict[int, list[Value]] = {}
    for vid, (_, gbar) in seeds.items():
        if vid in relevant:
            pending.setdefault(vid, []).append(gbar)
    done: dict[int, Value] = {}
    wrt_ids = {w.id for w in wrt}
    for v in reversed(list(graph.values)):
        if v.id not in relevant or v.id not in pending:
            continue
        gbar = add_all(graph, pending.pop(v.id))
        done[v.id] = gbar
        if v.id in wrt_ids and not v.args:
            continue
        for j, a in enumerate(v.args):
            if a.id not in relevant:
                continue
            contrib = _rule(graph, v, j, gbar)
            if contrib is not None:
                pending.setdefault(a.id, []).append(contrib)
    return {w.id: done.get(w.id) for w in wrt}


def differentiate(forward: Graph, wrt_inputs: list[str]) -> Graph:
    """The backward program of a chunk program.

    Inputs: the forward inputs plus `d_<output>` for each forward output. Outputs: `d_<input>` for every
    input in `wrt_inputs`, with the input's full axes. Forward values the adjoints need are recomputed.
    """
    graph = ir.rebuild(forward, lambda v: True)
    seeds = {}
    for name, _out in forward.outputs.items():
        out_v = graph.outputs[name]
        seeds[out_v.id] = (out_v, graph.input(f"d_{name}", out_v.axes))
    wrt = [graph.inputs[n] for n in wrt_inputs]
    adj = backprop(graph, seeds, wrt)
    graph.outputs = {}
    for w in wrt:
        g = adj[w.id]
        if g is None:
            g = graph.const(0.0)
        graph.outputs[f"d_{w.op.name}"] = graph.broadcast(g, w.axes, batched=w.batched)
    return ir.prune(graph)
