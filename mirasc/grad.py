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
    if isinstance(op, ir.TriInverse):
        return _tri_inverse_rule(graph, v, gbar)
    if isinstance(op, ir.DecayedProduct):
        return _decayed_product_rule(graph, v, j, gbar)
    raise TypeError(f"cannot differentiate {op}")


def _decayed_product_rule(graph: Graph, v: Value, j: int, gbar: Value) -> Value | None:
    """v = Σ x·y·E over the axis it lacks, E = e^{a[t, c] − b[s, c]} mask[t, s]. x, y and v hold the three pairs of
    (t, s, c), so each factor's adjoint is the same product of the other two: x̄ = Σ v̄·y·E onto x's axes. The
    log-decays enter as +a[t, c] and −b[s, c]: ā = u ⊙ ū for u the one of x, y, v̄ on (t, c) and ū its adjoint
    (v itself when u is v̄), b̄ = −(the same on (s, c)). The mask is a constant."""
    x, y, a, b, mask = v.args
    gbar = graph.broadcast(gbar, v.axes) if gbar.axes != v.axes else gbar
    if j in (0, 1):
        return graph.decayed_product(v.args[j].axes, gbar, v.args[1 - j], a, b, mask)
    if j == 4:
        return None
    side = a if j == 2 else b
    factors = [x, y, gbar]
    (u,) = [f for f in factors if set(f.axes) == set(side.axes)]
    others = [f for f in factors if f is not u]
    partner = v if u is gbar else graph.decayed_product(side.axes, *others, a, b, mask)
    sign = 1 if j == 2 else -1
    return graph.ew(lambda p, q: sign * p * q, u, partner)


def _tri_inverse_rule(graph: Graph, v: Value, gbar: Value) -> Value:
    """T = (I + A)⁻¹: dT = −T dA T, so Ā = −Tᵀ T̄ Tᵀ, on the strictly lower part (the only part of A read).
    With token axes t, s, u: M[t, s] = Σ_u T[u, t] T̄[u, s], then Ā[t, s] = −Σ_u M[t, u] T[s, u]."""
    full = gbar if set(gbar.axes) == {"t", "s"} else graph.broadcast(gbar, ("t", "s"))
    m = graph.einsum(("t", "s"), graph.rename(v, t="u", s="t"), graph.rename(full, t="u"))
    back = graph.einsum(("t", "s"), graph.rename(m, s="u"), graph.rename(v, s="u", t="s"))
    return graph.ew(lambda mask, x: -mask * x, graph.mask("strict"), back)


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


# Values the backward recomputes rather than saves: free to rebuild (inputs, constants, masks, views), or too
# large to keep for every chunk (a (t, s) tile with a feature axis, such as a channel-wise pairwise decay).
_RECOMPUTED_OPS = (ir.Input, ir.Const, ir.Size, ir.Mask, ir.Rename, ir.Broadcast)
_TOKEN_AXES, _FEATURE_AXES = {"t", "s", "u"}, {"i", "o", "h", "g"}


def _recomputed(v: Value) -> bool:
    axes = set(v.axes)
    return isinstance(v.op, _RECOMPUTED_OPS) or (len(axes & _TOKEN_AXES) >= 2 and bool(axes & _FEATURE_AXES))


def split_saved(forward: Graph, backward: Graph) -> tuple[Graph, Graph, list[str]]:
    """Trade memory for time: (a forward program that also returns the values its backward needs, a backward
    program that takes them as inputs instead of recomputing them, the names of those values, `saved_<j>`).

    A value of the backward is primal when no `d_*` input reaches it; the saved values are the primal values
    an adjoint (or a recomputed primal value it uses) reads, except the recomputed kinds above.
    """
    d_inputs = [v for name, v in backward.inputs.items() if name.startswith("d_")]
    dual = _descendants(backward, d_inputs)
    saved: dict[int, Value] = {}
    seen: set[int] = set()
    stack = [a for v in backward.values if v.id in dual for a in v.args if a.id not in dual]
    stack += [v for v in backward.outputs.values() if v.id not in dual]
    while stack:
        v = stack.pop()
        if v.id in seen:
            continue
        seen.add(v.id)
        if _recomputed(v):
            stack.extend(v.args)
        else:
            saved[v.id] = v
    order = sorted(saved)
    names = {vid: f"saved_{j}" for j, vid in enumerate(order)}

    train = ir.rebuild(forward, lambda v: True)
    primal: dict[int, Value] = {}
    for v in backward.values:
        if v.id in dual:
            continue
        if isinstance(v.op, ir.Input):
            primal[v.id] = train.inputs[v.op.name]
        else:
            primal[v.id] = train._add(v.op, tuple(primal[a.id] for a in v.args), v.axes, v.batched, v.hint)
    for vid in order:
        train.outputs[names[vid]] = primal[vid]

    reuse = Graph()
    mapped: dict[int, Value] = {}
    for v in backward.values:
        if v.id in names:
            mapped[v.id] = reuse.input(names[v.id], v.axes, v.batched)
        elif isinstance(v.op, ir.Input):
            mapped[v.id] = reuse.input(v.op.name, v.axes, v.batched)
        else:
            mapped[v.id] = reuse._add(v.op, tuple(mapped[a.id] for a in v.args), v.axes, v.batched, v.hint)
    reuse.outputs = {k: mapped[v.id] for k, v in backward.outputs.items()}
    return ir.prune(train), ir.prune(reuse), [names[vid] for vid in order]
