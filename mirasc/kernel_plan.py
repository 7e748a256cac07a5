"""How a chunk program is cut into GPU kernels and ordered within one, decided on the IR before any line is
emitted (mirasc.triton_kernels assembles the kernels from these decisions):

- `schedule`: the order a kernel makes its values in, chosen by a static estimate of the register tiles live at
  once (`tile_units`, `peak_units`), the stand-in for the GPU compiler's register pressure that decides spills;
- `value_kinds` / `value_local`: whether a kernel can run as independent programs over blocks of the value axis;
- `gradient_terms`: the summands of an input's gradient that get a kernel each.
"""

from __future__ import annotations

import sympy as sp

from . import ir
from .emit_triton import inlined
from .ir import Graph, Value

VALUE_AXIS = "o"

# Register tiles, in units of a 64 x 64 tile, that a value holds while it lives (the sizes of a typical kernel: chunk
# and channel axes 64, the hidden block 32). Masks, pairwise decays (written where used), vectors and scalars: none.
_NOMINAL = {"t": 64, "s": 64, "u": 64, "o": 64, "i": 64, "h": 32, "g": 32}


def tile_units(v: Value) -> float:
    if inlined(v) or isinstance(v.op, (ir.Const, ir.Size, ir.Mask)) or len(v.axes) < 2:
        return 0.0
    n = 1
    for a in v.axes:
        n *= _NOMINAL[a]
    return n / 4096


def _working_units(v: Value) -> float:
    """Tiles a value's making holds besides its result: a channel-decay product's matrix products across sub-chunks
    (mirasc.emit_triton.decayed_product) keep an operand with its decay folded in, the decay of the other side and
    the product, each (C, channels)."""
    return 3 * _NOMINAL["t"] * _NOMINAL[ir.decay_channel(v)] / 4096 if isinstance(v.op, ir.DecayedProduct) else 0.0


def peak_units(graph: Graph, order: list[Value]) -> float:
    """The most register tiles live at once when the values are made in `order` (each from its making to its last
    read): a static stand-in for the GPU compiler's register pressure, which decides spills."""
    pos = {v.id: k for k, v in enumerate(order)}
    last = {v.id: len(order) for v in graph.outputs.values()}
    for v in order:
        for a in v.args:
            last[a.id] = max(last.get(a.id, -1), pos[v.id])
    live, peak, ending = 0.0, 0.0, {}
    for k, v in enumerate(order):
        units = tile_units(v)
        live += units
        peak = max(peak, live + _working_units(v))
        ending.setdefault(last.get(v.id, k), []).append(units)
        live -= sum(ending.pop(k, []))
    return peak


def _walk(graph: Graph, arg_order) -> list[Value]:
    """Values in the order a depth-first walk from the outputs first needs them, args visited in arg_order."""
    order: list[Value] = []
    seen: set[int] = set()
    for root in graph.outputs.values():
        stack = [(root, False)]
        while stack:
            v, expanded = stack.pop()
            if v.id in seen:
                continue
            if expanded:
                seen.add(v.id)
                order.append(v)
                continue
            stack.append((v, True))
            stack.extend((a, False) for a in reversed(arg_order(v)) if a.id not in seen)
    return order


def schedule(graph: Graph) -> list[Value]:
    """The order the values are emitted in (the order the GPU compiler keeps): each value just before its first use,
    so that a tile made early for a late use does not hold registers in between. Two walks from the outputs: args in
    order, and args needing the most registers first (Sethi and Ullman's rule for trees); the one with the smaller
    peak of live tiles wins."""
    need: dict[int, float] = {}
    for v in graph.values:  # topological: args first
        args = sorted((need[a.id] for a in v.args), reverse=True)
        need[v.id] = max([tile_units(v)] + [n + k for k, n in enumerate(args)])
    orders = [_walk(graph, lambda v: list(v.args)),
              _walk(graph, lambda v: sorted(v.args, key=lambda a: -need[a.id]))]
    return min(orders, key=lambda order: peak_units(graph, order))


def value_kinds(graph: Graph) -> dict[int, str] | None:
    """How each value of the program behaves when one program holds only a block of the value axis's columns:
    "whole" (the same in every block: it does not depend on the value axis), "columns" (this block's columns),
    "partial" (this block's share of a sum over the value axis, linear in it up to an output, so the blocks'
    outputs add up to the whole). None when some value is none of these (it scans along, relabels or takes a
    nonlinear function of a sum over the value axis). Such a program runs as independent programs over blocks of
    BV value columns, as flash-linear-attention splits chunk_fwd_h by BV."""
    kinds: dict[int, str] = {}
    for v in graph.values:
        args = [kinds[a.id] for a in v.args]
        if isinstance(v.op, ir.Rename) and any(VALUE_AXIS in pair for pair in v.op.mapping):
            return None
        if isinstance(v.op, (ir.Cumsum, ir.LogSumExp)) and v.op.axis == VALUE_AXIS:
            return None
        if VALUE_AXIS in v.axes:
            if "partial" in args:  # a sum over the value axis spread back over it needs every block
                return None
            kinds[v.id] = "columns"
        elif any(VALUE_AXIS in a.axes for a in v.args):  # a contraction over the value axis
            if not isinstance(v.op, ir.Einsum) or "partial" in args:
                return None
            kinds[v.id] = "partial"
        elif "partial" in args:
            if not _linear_in(v, [x for x, k in zip(v.args, args) if k == "partial"]):
                return None
            kinds[v.id] = "partial"
        else:
            kinds[v.id] = "whole"
    return kinds


def _linear_in(v: Value, partial: list[Value]) -> bool:
    """Whether v is linear and homogeneous in its partial arguments together (so the blocks' shares add up)."""
    if isinstance(v.op, (ir.Rename, ir.Broadcast, ir.Cumsum)):
        return True
    if isinstance(v.op, ir.Einsum):
        return len(partial) == 1
    if not isinstance(v.op, ir.Elementwise):
        return False
    syms = ir.arg_symbols(len(v.args))
    ps = [x for x, a in zip(syms, v.args) if any(a is p for p in partial)]
    expr = v.op.expr
    return expr.subs({x: 0 for x in ps}) == 0 and all(sp.diff(expr, x, y) == 0 for x in ps for y in ps)


def value_local(graph: Graph) -> bool:
    """Whether every value column of the program depends on that column only (no sum over the value axis at
    all): the delta rule's passes qualify (their predictions sum over the key axis), a LayerNorm over the value
    axis (TTT) does not. A value without the value axis is then the same in every block (each block recomputes
    it, and may store it: the same bits)."""
    kinds = value_kinds(graph)
    return kinds is not None and "partial" not in kinds.values()


# A gradient kernel whose schedule keeps more register tiles than this live at once (tile_units) is split further
# into the summands of its sums. From ahead-of-time compiles at C = D = 64, bf16, 8 warps: for an H100 kernels up to
# about 9 units compile without spills, 12 and up spill; for an A100 DeltaNet's key-gradient term of 7 spilled
# 104 B a thread with its best config, its three summands (3, 3, 5) none with their inputs loaded again
# (bench/README.md, "Inputs read again after the products").
GRADIENT_UNITS = 6.0
MAX_TERMS = 12  # kernels per input gradient at most: each recomputes the forward values its term needs


def summands(v: Value) -> list[Value] | None:
    """The terms of v when v is a plain sum of values of its own axes (a broadcast term is left whole)."""
    if not (isinstance(v.op, ir.Elementwise) and len(v.args) >= 2):
        return None
    if v.op.expr != sp.Add(*ir.arg_symbols(len(v.args))) or any(a.axes != v.axes for a in v.args):
        return None
    return list(v.args)


def gradient_terms(backward: Graph, n: str, deeper: bool = True) -> list[Graph]:
    """The backward program with output `term` set to each summand of the gradient of input n (reverse mode adds
    the contributions of each path at the end): a kernel per term holds only that path's tiles. A summand that is
    itself a sum (or a linear op of one) is split again while its kernel would keep more than GRADIENT_UNITS tiles
    live, when `deeper`. The launcher adds the terms."""
    g = ir.rebuild(backward, lambda x: True)  # a working copy the split relabellings are added to
    terms, done = [g.outputs[f"d_{n}"]], []
    while terms:
        v = terms.pop(0)
        first = not done and not terms
        if first or (deeper and len(done) + len(terms) < MAX_TERMS and _term_peak(g, v) > GRADIENT_UNITS):
            parts = summands(v) or _distribute(g, v)
            if parts:
                terms = parts + terms
                continue
        done.append(v)
    out = []
    for t in done:
        part = ir.rebuild(g, lambda x: True)  # the same values in the same order: ids carry over
        part.outputs = {"term": part.values[t.id]}
        out.append(part)
    return out


def _distribute(g: Graph, v: Value) -> list[Value] | None:
    """v = op(..., a + b + ..., ...) for an op linear in that argument (a relabelling, a broadcast, a cumulative
    sum, a contraction, an elementwise expression homogeneous and linear in it): [op(..., a, ...), op(..., b, ...),
    ...], made in g. None when v is not of that form."""
    for j, arg in enumerate(v.args):
        if not _linear_in(v, [arg]):
            continue
        parts = summands(arg) or _distribute(g, arg)  # a sum, or a linear op of one, ...
        if parts:
            return [g._add(v.op, v.args[:j] + (part,) + v.args[j + 1:], v.axes, v.batched, v.hint) for part in parts]
    return None


def _term_peak(graph: Graph, v: Value) -> float:
    """peak_units of the part of graph that computes v (a view over graph's values: nothing copied)."""
    needed: set[int] = set()
    stack = [v]
    while stack:
        x = stack.pop()
        if x.id not in needed:
            needed.add(x.id)
            stack.extend(x.args)
    part = Graph(values=[x for x in graph.values if x.id in needed], outputs={"term": v})
    return peak_units(part, schedule(part))
