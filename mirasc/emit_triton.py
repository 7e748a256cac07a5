"""emit (Triton): the kernels of a spec, from its chunk programs in dot form (mirasc.dotform).

A kernel program owns one sequence of one head and walks its chunks, so every IR value is a register tile shaped
by its axes in ir.AXIS_ORDER (no batch axis): token axes have the constexpr length C, channel axes D, hidden axes
HID. Every contraction is a `tl.dot` of two 2-D tiles (operands cast to DOT_DTYPE: bf16/fp16 as given, fp32 on
tf32 tensor cores unless DOT_PRECISION is "ieee", fp64 exact; fp32 accumulation, fp64 for fp64) or a product whose
tile has at most two axes; a value or product with three axes (a (C, C, D) tile) is refused, naming it, unless
the kernel is the explicit fallback for chunks too strongly decayed for the factored program (`allow_cube`).

The sequence length is a runtime argument (one compile serves every length): the chunk loop is a `while` over
the sequence's tokens. Sequences are rows of [rows, T, ...] inputs, or, with IS_VARLEN, segments
cu_seqlens[j]:cu_seqlens[j + 1] of one packed row per head (flash-linear-attention's convention). The last chunk
may be partial: its token tiles are loaded masked (q, k, v as 0, gates as 1, which keeps every intermediate
finite), and the causal structure of the chunk program makes the padded rows invisible to the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from . import ir
from .dotform import is_dot, product_tile_axes, to_dot_form
from .ir import Graph, Value
from .triton_printer import TritonPrinter

SIZE = {"t": "C", "s": "C", "u": "C", "o": "D", "i": "D", "h": "HID", "g": "HID"}
OFFS = {a: f"offs_{a}" for a in ir.AXIS_ORDER}
_TILE_OPS = (ir.Input, ir.Elementwise, ir.Einsum, ir.Mask, ir.LogSumExp, ir.Cumsum, ir.Rename, ir.Broadcast,
             ir.TriInverse)


class CubeTileError(ValueError):
    """A value or product with three or more axes: not a GPU tile (the kernel would spill)."""


def inlined(v: Value) -> bool:
    """Whether v is printed where it is used instead of held in a variable: masks, and (t, s) tiles computed
    elementwise from masks and per-token vectors (pairwise decays). They cost a few ALU operations to remake, and a
    tile held from its making to its last use costs registers (C·C / threads) all the while."""
    if isinstance(v.op, ir.Mask):
        return True
    return (isinstance(v.op, ir.Elementwise) and len(v.axes) == 2
            and all(inlined(a) or len(a.axes) <= 1 for a in v.args))


def name(v: Value) -> str:
    if isinstance(v.op, ir.Input):
        return v.op.name
    if isinstance(v.op, ir.Mask):
        return _MASKS[v.op.kind]
    if inlined(v):
        syms = ir.arg_symbols(len(v.args))
        return f"({TritonPrinter({s: align(a, v.axes) for s, a in zip(syms, v.args)})(v.op.expr)})"
    return f"v{v.id}"


def describe(v: Value) -> str:
    return f"%{v.id} {''.join(v.axes)} = {type(v.op).__name__}" + (f" ({v.hint})" if v.hint else "")


def align(v: Value, out_axes: tuple[str, ...]) -> str:
    """v indexed with None for every axis of out_axes it lacks (same relative order: both canonical)."""
    if isinstance(v.op, ir.Const):
        return TritonPrinter({}).number(sp.Float(v.op.value))
    if isinstance(v.op, ir.Size):
        return SIZE[v.op.axis] if v.op.axis not in ir.TOKEN_AXES else "nv"
    if v.axes == out_axes or not v.axes:
        return name(v)
    return f"{name(v)}[{', '.join(':' if a in v.axes else 'None' for a in out_axes)}]"


def _shape(axes) -> str:
    return "(" + ", ".join(SIZE[a] for a in axes) + ("," if len(axes) == 1 else "") + ")"


def _dot(v: Value) -> str:
    """tl.dot for a matrix product (dotform.is_dot): operands in DOT_DTYPE, accumulation in DTYPE."""
    a, b = v.args
    (kax,) = set(a.axes) & set(b.axes)
    x_ax = next(x for x in a.axes if x != kax)
    y_ax = next(x for x in b.axes if x != kax)
    lhs = name(a) if a.axes == (x_ax, kax) else f"tl.trans({name(a)})"
    rhs = name(b) if b.axes == (kax, y_ax) else f"tl.trans({name(b)})"
    out = f"tl.dot({lhs}.to(DOT_DTYPE), {rhs}.to(DOT_DTYPE), input_precision=DOT_PRECISION, out_dtype=DTYPE)"
    return out if v.axes == (x_ax, y_ax) else f"tl.trans({out})"


def _einsum(v: Value) -> str:
    if is_dot(v):
        return f"{name(v)} = {_dot(v)}"
    union = product_tile_axes(v)
    if len(v.args) == 1 and set(v.axes) == set(union):
        return f"{name(v)} = {name(v.args[0])}"
    expr = f"({' * '.join(align(a, union) for a in v.args)})"
    for j in reversed([j for j, a in enumerate(union) if a not in v.axes]):
        expr = f"tl.sum({expr}, axis={j})"
    return f"{name(v)} = {expr}"


def _tri_inverse(v: Value) -> list[str]:
    """(I + A)⁻¹ by substitution, one row at a time over register tiles: row r of the inverse is e_r minus the
    solved rows' share. (C steps of C x C work; flash-linear-attention inverts 16 x 16 diagonal blocks this way and
    merges them with matrix products, which a later version should do.)"""
    nm, mat = name(v), name(v.args[0])
    return [f"{nm} = tl.where(offs_t[:, None] == offs_s[None, :], 1.0, 0.0).to(DTYPE)",
            f"for {nm}_r in range(1, C):",
            f"    {nm}_a = tl.sum(tl.where((offs_t[:, None] == {nm}_r) & (offs_s[None, :] < {nm}_r), {mat}, 0.0), "
            "axis=0)",
            f"    {nm}_u = tl.sum({nm}_a[:, None] * {nm}, axis=0)",
            f"    {nm} = tl.where(offs_t[:, None] == {nm}_r, {nm} - {nm}_u[None, :], {nm})"]


_MASKS = {
    "causal": "tl.where(offs_t[:, None] >= offs_s[None, :], 1.0, 0.0)",
    "strict": "tl.where(offs_t[:, None] > offs_s[None, :], 1.0, 0.0)",
    "first": "tl.where(offs_t == 0, 1.0, 0.0)",
    "last": "tl.where(offs_t == nv - 1, 1.0, 0.0)",  # the chunk's last real token
    "end": "tl.where((offs_t == nv - 1) & (nv == C), 1.0, 0.0)",  # the last token of a complete chunk
}


def _elementwise(v: Value) -> list[str]:
    syms = ir.arg_symbols(len(v.args))
    temps, (expr,) = sp.cse([v.op.expr], symbols=sp.numbered_symbols("_c"))
    env = {s: align(a, v.axes) for s, a in zip(syms, v.args)}
    lines = []
    for t, val in temps:
        lines.append(f"{t} = {TritonPrinter(env)(val)}")
        env[t] = str(t)
    lines.append(f"{name(v)} = {TritonPrinter(env)(expr)}")
    if not any(isinstance(a.op, _TILE_OPS) for a in v.args):  # only constants and sizes: make it a tile
        lines.append(f"{name(v)} = tl.full({_shape(v.axes)}, {name(v)}, DTYPE)")
    return lines


def line(v: Value, allow_cube: bool = False) -> list[str]:  # noqa: C901 - one case per op
    op, nm = v.op, name(v)
    if not allow_cube and (len(v.axes) > 2 or len(product_tile_axes(v) if isinstance(op, ir.Einsum) else ()) > 2):
        raise CubeTileError(f"{describe(v)}: a tile with three axes (C·C·D or more per program) has no place in a GPU "
                            "kernel; the chunk program needs a form without it (e.g. the factored channel decay)")
    if isinstance(op, (ir.Input, ir.Size)) or inlined(v):
        return []
    if isinstance(op, ir.Const):
        return [f"{nm} = {align(v, ())}"]
    if isinstance(op, ir.Elementwise):
        return _elementwise(v)
    if isinstance(op, ir.Einsum):
        return [_einsum(v)]
    if isinstance(op, ir.TriInverse):
        return _tri_inverse(v)
    if isinstance(op, ir.LogSumExp):
        a = v.args[0]
        k = a.axes.index(op.axis)
        expanded = f"{nm}_max[{', '.join('None' if x == op.axis else ':' for x in a.axes)}]"
        return [f"{nm}_max = tl.max({name(a)}, axis={k})",
                f"{nm} = {nm}_max + tl.log(tl.sum(tl.exp({name(a)} - {expanded}), axis={k}))"]
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
    if isinstance(op, ir.Broadcast):
        a = v.args[0]
        if isinstance(a.op, ir.Const):
            return [f"{nm} = tl.full({_shape(v.axes)}, {align(a, ())}, DTYPE)"]
        return [f"{nm} = tl.broadcast_to({align(a, v.axes)}, {_shape(v.axes)})"]
    raise TypeError(f"no Triton emission for {describe(v)}")


def schedule(graph: Graph) -> list[Value]:
    """The graph's values in the order a depth-first walk from the outputs first needs them: each value is made
    just before its first use, so a tile computed early for a late use does not hold registers in between (the
    emitted order is the order the GPU compiler keeps)."""
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
            stack.extend((a, False) for a in reversed(v.args) if a.id not in seen)
    return order


def body(graph: Graph, allow_cube: bool = False, loads: dict[str, str] | None = None) -> list[str]:
    """The lines computing the graph's outputs; `loads` gives the load of each input read in the loop, emitted
    just before its first use."""
    loads = loads or {}
    out = []
    for v in schedule(graph):
        if isinstance(v.op, ir.Input):
            lines = [f"{v.op.name} = {loads[v.op.name]}"] if v.op.name in loads else []
        else:
            lines = line(v, allow_cube)
        if lines and v.hint and not isinstance(v.op, (ir.Mask, ir.Input)):
            lines[-1] += f"  # {v.hint}"
        out.extend(lines)
    return out


# ------------------------------------------------------------------------------------------------ memory access
# Token inputs are [rows, T, rest...]: a program reads tokens bos + c*C + offs_t of its row. Every other tensor is
# [count, axes...], indexed by the program (initial and final state, chunk-start states by chunk) or by the row
# (static gates and outer parameters).
def _offsets(axes: tuple[str, ...], token: bool) -> str:
    terms, stride = [], []
    for a in reversed(axes):
        idx = "(tok + offs_t)" if (a == "t" and token) else OFFS[a]
        terms.append(" * ".join([_index(idx, a, axes)] + stride))
        if not (a == "t" and token):
            stride = [SIZE[a]] + stride
    return " + ".join(reversed(terms)) if terms else "0"


def _size(axes: tuple[str, ...], token: bool) -> str:
    parts = [SIZE[a] for a in axes if not (token and a == "t")]
    return " * ".join(parts) if parts else "1"


def _index(idx: str, axis: str, axes: tuple[str, ...]) -> str:
    if len(axes) == 1:
        return idx
    return f"{idx}[{', '.join(':' if a == axis else 'None' for a in axes)}]"


def _token_mask(axes: tuple[str, ...]) -> str:
    return _index("(offs_t < nv)", "t", axes)


def load(ptr: str, axes: tuple[str, ...], index: str, token: bool = False, other: float = 0.0) -> str:
    """A tile of the tensor at ptr: the token tile of this chunk (token), else entry `index` of its first axis.
    Token tiles keep their dtype (bf16 q, k, v feed tl.dot as they are; arithmetic promotes them to DTYPE)."""
    if token:
        base = f"{ptr} + (row * T + bos) * {_size(axes, True)}"
        return f"tl.load({base} + {_offsets(axes, True)}, mask={_token_mask(axes)}, other={other})"
    return f"tl.load({ptr} + {index} * {_size(axes, False)} + {_offsets(axes, False)}).to(DTYPE)"


def store(ptr: str, axes: tuple[str, ...], index: str, value: str, token: bool = False, mask: str = "") -> str:
    val = f"{value}.to({ptr}.dtype.element_ty)"
    if token:
        base = f"{ptr} + (row * T + bos) * {_size(axes, True)}"
        return f"tl.store({base} + {_offsets(axes, True)}, {val}, mask={_token_mask(axes)})"
    where = f", mask={mask}" if mask else ""
    return f"tl.store({ptr} + {index} * {_size(axes, False)} + {_offsets(axes, False)}, {val}{where})"


# ------------------------------------------------------------------------------------------------ kernels
@dataclass(frozen=True)
class KernelIO:
    """What the kernels read and write, in argument order (mirasc.lower.input_names)."""

    states: list[str]
    rest: list[str]  # inputs after the state
    token: dict[str, bool]  # which of `rest` run along the sequence
    axes: dict[str, tuple[str, ...]]  # every input's axes


@dataclass
class Kernel:
    """One kernel for the template: `mode` up / down walks the chunks of a sequence in order / in reverse
    (grid: programs); `chunk` does one chunk (grid: programs × chunks)."""

    name: str
    doc: str
    mode: str
    args: list[str]
    prologue: list[str]
    loop: list[str]
    epilogue: list[str]


def _fill(n: str) -> float:
    return 1.0 if n.startswith("gate_") else 0.0  # padded tokens: gates 1, q, k, v 0 (every value stays finite)


def _only(graph: Graph, names: list[str]) -> Graph:
    """The part of `graph` that computes the named outputs."""
    part = ir.rebuild(graph, lambda v: True)
    part.outputs = {n: part.outputs[n] for n in names}
    return ir.prune(part)


# Values worth making once per chunk and storing, rather than recomputing in every kernel that reads them: state-
# free and expensive (the triangular inverse is C substitution steps over (C, C) tiles).
STORED_OPS = (ir.TriInverse,)


def _stored_as_inputs(graph: Graph) -> Graph:
    """`graph` with its stored values (STORED_OPS, in graph order: `stored_0`, ...) read as inputs instead."""
    new = Graph()
    mapped: dict[int, Value] = {}
    count = 0
    for v in graph.values:
        if isinstance(v.op, STORED_OPS):
            mapped[v.id] = new.input(f"stored_{count}", v.axes, v.batched)
            count += 1
        elif isinstance(v.op, ir.Input):
            mapped[v.id] = new.input(v.op.name, v.axes, v.batched)
        else:
            mapped[v.id] = new._add(v.op, tuple(mapped[a.id] for a in v.args), v.axes, v.batched, v.hint)
    new.outputs = {k: mapped[v.id] for k, v in graph.outputs.items()}
    return ir.prune(new)


def stored_values(graph: Graph) -> list[Value]:
    return [v for v in graph.values if isinstance(v.op, STORED_OPS)]


def kernels(io: KernelIO, forward: Graph, backward: Graph, suffix: str = "", allow_cube: bool = False) -> list[Kernel]:
    """The four kernels of a chunk program, each from the part of the forward or backward program it needs:

    state_fwd   sequential over a sequence's chunks: the final state, and every chunk's start state (`starts`);
    out_fwd     one chunk per program, all chunks at once: the outputs, from the stored start state;
    state_bwd   sequential, last chunk first: the initial state's adjoint, and the adjoint entering every
                chunk's end (`carries`);
    grad_<x>_<j>_bwd  one chunk per program, one kernel per input x and summand j of its gradient (a path by which
                x reaches the outputs): from the chunk's start state and carry (the launcher adds the terms, and sums a
                static gate's or parameter's gradient over chunks).
    Splitting by job keeps each kernel's live tiles few (registers, no spills) and makes two of the four
    parallel over chunks, as flash-linear-attention splits chunk_fwd_h from chunk_fwd_o."""
    fwd, bwd = to_dot_form(forward), to_dot_form(backward)
    states, rest, token, axes = io.states, io.rest, io.token, io.axes
    static = [n for n in rest if not token[n]]
    chunk_at = "(first_chunk + c)"
    tokens = {n: load(f"{n}_ptr", axes[n], "", True, _fill(n)) for n in rest if token[n]}
    static_loads = [f"{n} = {load(f'{n}_ptr', axes[n], 'row')}" for n in static]
    starts = {s: load(f"starts_{s}_ptr", axes[s], chunk_at) for s in states}
    made = stored_values(fwd)
    kept = [f"stored_{j}" for j in range(len(made))]
    starts.update({n: load(f"{n}_ptr", v.axes, chunk_at) for n, v in zip(kept, made)})
    rest_args = [f"{n}_ptr" for n in rest]
    out = []

    part = _only(fwd, [f"new_{s}" for s in states])
    part.outputs.update({n: v for n, v in zip(kept, stored_values(part))})
    out.append(Kernel(f"chunk_state_fwd_kernel{suffix}", "the final state and every chunk's start state (and the "
                      "values stored per chunk)", "up",
                      [f"{s}_ptr" for s in states] + rest_args + [f"final_{s}_ptr" for s in states] +
                      [f"starts_{s}_ptr" for s in states] + [f"{n}_ptr" for n in kept],
                      [f"{s} = {load(f'{s}_ptr', axes[s], 'pid')}" for s in states] + static_loads,
                      [store(f"starts_{s}_ptr", axes[s], chunk_at, s) for s in states] +
                      body(part, allow_cube, tokens) +
                      [store(f"{n}_ptr", part.outputs[n].axes, chunk_at, name(part.outputs[n])) for n in kept] +
                      [f"{s} = {name(part.outputs['new_' + s])}" for s in states],
                      [store(f"final_{s}_ptr", axes[s], "pid", s) for s in states]))
    if len(stored_values(part)) != len(made):
        raise ValueError("a stored value of the chunk program is not made by its state pass")
    fwd, bwd = _stored_as_inputs(fwd), _stored_as_inputs(bwd)
    rest_args += [f"{n}_ptr" for n in kept]

    part = _only(fwd, ["out"])
    out.append(Kernel(f"chunk_out_fwd_kernel{suffix}", "one chunk's outputs, from its stored start state", "chunk",
                      [f"starts_{s}_ptr" for s in states] + rest_args + ["out_ptr"], static_loads,
                      body(part, allow_cube, {**tokens, **starts}) +
                      [store("out_ptr", part.outputs["out"].axes, "", name(part.outputs["out"]), token=True)], []))

    d_ins = {**tokens, **starts, "d_out": load("d_out_ptr", bwd.inputs["d_out"].axes, "", True)}
    part = _only(bwd, [f"d_{s}" for s in states])
    out.append(Kernel(f"chunk_state_bwd_kernel{suffix}", "the initial state's adjoint and the adjoint entering every "
                      "chunk's end", "down",
                      [f"starts_{s}_ptr" for s in states] + rest_args + ["d_out_ptr"] +
                      [f"d_final_{s}_ptr" for s in states] + [f"d_init_{s}_ptr" for s in states] +
                      [f"carries_{s}_ptr" for s in states],
                      [f"carry_{s} = {load(f'd_final_{s}_ptr', axes[s], 'pid')}" for s in states] + static_loads,
                      [store(f"carries_{s}_ptr", axes[s], chunk_at, f"carry_{s}") for s in states] +
                      body(part, allow_cube, {**d_ins, **{f"d_new_{s}": f"carry_{s}" for s in states}}) +
                      [f"carry_{s} = {name(part.outputs['d_' + s])}" for s in states],
                      [store(f"d_init_{s}_ptr", axes[s], "pid", f"carry_{s}") for s in states]))

    carries = {f"d_new_{s}": load(f"carries_{s}_ptr", axes[s], chunk_at) for s in states}
    for n in rest:  # one kernel per input and summand: each recomputes only what its own term needs
        for j, term in enumerate(gradient_terms(bwd, n)):
            part = _only(term, ["term"])
            g = name(part.outputs["term"])
            grad = (store(f"grad_{n}_ptr", axes[n], "", g, token=True) if token[n] else
                    store(f"grad_{n}_ptr", axes[n], chunk_at, g, mask="nv > 0"))
            out.append(Kernel(f"chunk_grad_{n}_{j}_bwd_kernel{suffix}", f"term {j} of the gradient of one chunk's "
                              f"`{n}`", "chunk",
                              [f"starts_{s}_ptr" for s in states] + [f"carries_{s}_ptr" for s in states] + rest_args +
                              ["d_out_ptr", f"grad_{n}_ptr"], static_loads,
                              body(part, allow_cube, {**d_ins, **carries}) + [grad], []))
    return out


def gradient_terms(backward: Graph, n: str) -> list[Graph]:
    """The backward program with output `term` set to each summand of the gradient of input n (reverse mode adds
    the contributions of each path at the end): a kernel per term holds only that path's tiles. The launcher adds
    the terms."""
    v = backward.outputs[f"d_{n}"]
    terms = [v]
    if isinstance(v.op, ir.Elementwise) and len(v.args) >= 2 and v.op.expr == sp.Add(*ir.arg_symbols(len(v.args))):
        terms = list(v.args)
    out = []
    for t in terms:
        g = ir.rebuild(backward, lambda x: True)  # the same values in the same order: ids carry over
        assert g.values[t.id].op == t.op and g.values[t.id].axes == t.axes
        g.outputs = {"term": g.values[t.id]}
        out.append(g)
    return out


OFFSETS = [f"offs_{a} = tl.arange(0, {SIZE[a]})" for a in ir.AXIS_ORDER]

__all__ = ["CubeTileError", "Kernel", "KernelIO", "TritonPrinter", "body", "kernels", "line", "load", "store"]
