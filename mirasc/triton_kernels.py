"""The kernels of a spec, assembled from its chunk programs (the lines of each value come from mirasc.emit_triton).

Four jobs, each emitted from the part of the forward or backward program it needs (`kernels`): the state pass,
the outputs, the backward state pass and one kernel per input and summand of its gradient. Within a kernel the
values are emitted in the order a depth-first walk from the outputs first needs them (`schedule`).

An MLP memory's hidden axis (4·D) does not fit a register tile: every value with a hidden axis is made in blocks
of BH along it, inside a loop over the blocks (`body`). Consecutive such values share one loop; a sum over the
hidden axis accumulates across the loop's blocks; a value needed by a later loop is written to the program's
scratch memory block by block and read back there. The hidden-axis state matrices then live in memory too: the
state pass reads a chunk's start state from `starts` and writes the next one there, the backward state pass
likewise with `carries`, and the kernels that would need scratch per chunk walk their sequence's chunks in one
program instead of one program per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from . import ir
from .dotform import to_dot_form
from .emit_triton import (
    OFFS,
    SHAPE,
    SIZE,
    describe,
    inlined,
    line,
    name,
    reduces_hidden,
    reduction_lines,
    wide,
)
from .ir import Graph, Value

# Values worth making once per chunk and storing, rather than recomputing in every kernel that reads them: state-
# free and expensive (the triangular inverse is C substitution steps over (C, C) tiles).
STORED_OPS = (ir.TriInverse,)
VALUE_AXIS = "o"


def offsets(value_blocks: bool) -> list[str]:
    """Each axis's offsets in a register tile. A value-blocked kernel's program (grid axis 2) holds the value axis's
    block program_id(2); any other kernel keeps a plain arange, since the offset costs registers where a kernel is
    already tight (titans, C = D = 64, bf16: its backward state pass spilled 3,880 B instead of 3,088 B with it)."""
    def line(a: str) -> str:
        start = "tl.program_id(2) * BV + " if value_blocks and a == VALUE_AXIS else ""
        return f"offs_{a} = {start}tl.arange(0, {SHAPE[a]})"
    return [line(a) for a in ir.AXIS_ORDER]


# ------------------------------------------------------------------------------------------------ memory access
# Token inputs are [rows, T, rest...]: a program reads tokens bos + c*C + offs_t of its row. Every other tensor is
# [count, axes...], indexed by the program (initial and final state, chunk-start states by chunk) or by the row
# (static gates and outer parameters). Offsets use the axes' extents in memory (SIZE); offs_h is the current block's.
def _offsets(axes: tuple[str, ...], token: bool) -> str:
    terms, stride = [], []
    for a in reversed(axes):
        idx = "(tok + offs_t)" if (a == "t" and token) else OFFS[a]
        terms.append(" * ".join([_index(idx, a, axes)] + stride))
        if not (a == "t" and token):
            stride = [SIZE[a]] + stride
    return " + ".join(reversed(terms)) if terms else "0"


def _size(axes, token: bool = False) -> str:
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
    return f"tl.load({ptr} + {index} * {_size(axes)} + {_offsets(axes, False)}).to(DTYPE)"


def store(ptr: str, axes: tuple[str, ...], index: str, value: str, token: bool = False, mask: str = "") -> str:
    val = f"{value}.to({ptr}.dtype.element_ty)"
    if token:
        base = f"{ptr} + (row * T + bos) * {_size(axes, True)}"
        return f"tl.store({base} + {_offsets(axes, True)}, {val}, mask={_token_mask(axes)})"
    where = f", mask={mask}" if mask else ""
    return f"tl.store({ptr} + {index} * {_size(axes)} + {_offsets(axes, False)}, {val}{where})"


# ------------------------------------------------------------------------------------------------ one chunk's body
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
        peak = max(peak, live)
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


@dataclass
class _Loop:
    """Values made in one loop over the hidden blocks (`sums`: those accumulated across its blocks)."""

    values: list[Value] = field(default_factory=list)
    sums: set[int] = field(default_factory=set)


@dataclass
class Body:
    """A chunk's lines, and the axes of each value it keeps in scratch memory, in slot order."""

    lines: list[str]
    scratch: list[tuple[str, ...]]


def _segments(order: list[Value]) -> list[Value | _Loop]:
    """Group the scheduled values: a wide value (or a sum over the hidden axis) joins the open loop unless it reads
    one of that loop's sums (then a new loop starts); any other value goes before the open loop, unless it reads one
    of its sums (then the loop closes first)."""
    segments: list[Value | _Loop] = []
    open_loop: _Loop | None = None
    for v in order:
        reads_sum = open_loop is not None and any(a.id in open_loop.sums for a in v.args)
        if wide(v) or reduces_hidden(v):
            if open_loop is None or reads_sum:
                open_loop = _Loop()
                segments.append(open_loop)
            open_loop.values.append(v)
            if reduces_hidden(v):
                open_loop.sums.add(v.id)
        elif reads_sum:
            open_loop = None
            segments.append(v)
        elif open_loop is not None:
            segments.insert(next(j for j, seg in enumerate(segments) if seg is open_loop), v)
        else:
            segments.append(v)
    return segments


def body(graph: Graph, allow_cube: bool = False, loads: dict[str, str] | None = None,
         wide_sources: dict[str, tuple[str, str]] | None = None,
         wide_outputs: dict[str, list[tuple[str, str, str]]] | None = None) -> Body:
    """The lines computing the graph's outputs.

    loads: the load of each narrow input, emitted just before its first use. wide_sources: where each wide input's
    blocks are read (pointer, index). wide_outputs: for an output that is wide, where its blocks go
    ([(pointer, index, mask)]); a narrow output is the caller's to use."""
    loads, wide_sources, wide_outputs = loads or {}, wide_sources or {}, wide_outputs or {}
    segments = _segments(schedule(graph))
    loop_of = {v.id: j for j, seg in enumerate(segments) if isinstance(seg, _Loop) for v in seg.values}
    out_of = {v.id: n for n, v in graph.outputs.items()}
    read_elsewhere = {a.id for j, seg in enumerate(segments) if isinstance(seg, _Loop) for u in seg.values
                      if not inlined(u) for a in _read(u) if loop_of.get(a.id, j) != j}
    kept = [v for seg in segments if isinstance(seg, _Loop) for v in seg.values
            if v.id in read_elsewhere and not isinstance(v.op, ir.Input)]
    total = _slot_offset(kept, len(kept))
    slot = {v.id: f"scratch_ptr + pid * ({total}) + {_slot_offset(kept, k)}" for k, v in enumerate(kept)}

    def fetch(v: Value, here: int) -> list[str]:
        """Lines making a wide value read in loop `here` available: its block from memory if made elsewhere."""
        if isinstance(v.op, ir.Input):
            ptr, index = wide_sources[v.op.name]
            return [f"{name(v)} = {load(ptr, v.axes, index)}"]
        if loop_of.get(v.id) != here:
            return [f"{name(v)} = tl.load({slot[v.id]} + {_offsets(v.axes, False)})"]
        return []

    lines: list[str] = []
    for j, seg in enumerate(segments):
        if not isinstance(seg, _Loop):
            if isinstance(seg.op, ir.Input):
                if seg.op.name in loads:
                    lines.append(f"{seg.op.name} = {loads[seg.op.name]}")
            else:
                lines += _with_hint(seg, line(seg, allow_cube))
            continue
        before, inside, after, fetched = [], [], [], set()
        for v in seg.values:
            for a in _read(v):
                if wide(a) and a.id not in fetched and (isinstance(a.op, ir.Input) or loop_of.get(a.id) != j):
                    inside += fetch(a, j)
                    fetched.add(a.id)
            if isinstance(v.op, ir.Input):
                continue
            if reduces_hidden(v):
                pre, acc, post = reduction_lines(v)
                before += pre
                inside += _with_hint(v, acc)
                after += post
                continue
            inside += _with_hint(v, line(v, allow_cube))
            if v.id in slot:
                inside.append(f"tl.store({slot[v.id]} + {_offsets(v.axes, False)}, {name(v)})")
            for ptr, index, mask in wide_outputs.get(out_of.get(v.id, ""), []):
                inside.append(store(ptr, v.axes, index, name(v), mask=mask))
        lines += before + ["for hb in range(0, HID, BH):  # the hidden axis, a block at a time",
                           "    offs_h = hb + tl.arange(0, BH)", "    offs_g = offs_h"]
        lines += ["    " + x for x in inside] + after
        if any("tl.store" in x for x in inside):  # other threads read these blocks next
            lines.append("tl.debug_barrier()")
    return Body(lines, [v.axes for v in kept])


def _read(v: Value) -> list[Value]:
    """The values v's lines read: its args, with an inlined arg (written where it is used) replaced by its own."""
    out = []
    for a in v.args:
        out += _read(a) if inlined(a) else [a]
    return out


def _slot_offset(kept: list[Value], k: int) -> str:
    parts = [_size(v.axes) for v in kept[:k]]
    return " + ".join(parts) if parts else "0"


def _with_hint(v: Value, lines: list[str]) -> list[str]:
    if lines and v.hint and not isinstance(v.op, (ir.Mask, ir.Input)):
        lines = [*lines[:-1], lines[-1] + f"  # {v.hint}"]
    return lines


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
    (grid: programs); `chunk` does one chunk (grid: programs × chunks). `scratch`: the axes of each value the
    kernel keeps in its program's scratch memory."""

    name: str
    doc: str
    mode: str
    args: list[str]
    prologue: list[str]
    loop: list[str]
    epilogue: list[str]
    scratch: list[tuple[str, ...]] = field(default_factory=list)
    # "columns": launched over blocks of BV value columns (grid axis 2), see value_kinds; "partial": likewise, each
    # block writing its share of a sum over the value axis to its own copy of the output; "none": one block of D
    value_blocks: str = "none"

    @property
    def offsets(self) -> list[str]:
        return offsets(self.value_blocks != "none")


def _fill(n: str) -> float:
    return 1.0 if n.startswith("gate_") else 0.0  # padded tokens: gates 1, q, k, v 0 (every value stays finite)


def _only(graph: Graph, names: list[str]) -> Graph:
    """The part of `graph` that computes the named outputs."""
    part = ir.rebuild(graph, lambda v: True)
    part.outputs = {n: part.outputs[n] for n in names}
    return ir.prune(part)


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


def stored_values(graph: Graph) -> list[Value]:
    return [v for v in graph.values if isinstance(v.op, STORED_OPS)]


# A gradient kernel whose schedule keeps more register tiles than this live at once (tile_units) is split further
# into the summands of its sums. From ahead-of-time compiles at C = D = 64, bf16, 8 warps: kernels up to about 9
# units compile without spills, 12 and up spill.
GRADIENT_UNITS = 7.0
MAX_TERMS = 12  # kernels per input gradient at most: each recomputes the forward values its term needs


def _summands(v: Value) -> list[Value] | None:
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
            parts = _summands(v) or _distribute(g, v)
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
        linear = isinstance(v.op, (ir.Rename, ir.Broadcast, ir.Cumsum, ir.Einsum))
        if isinstance(v.op, ir.Elementwise):
            x = ir.arg_symbols(len(v.args))[j]
            linear = sp.diff(v.op.expr, x, 2) == 0 and v.op.expr.subs(x, 0) == 0
        if not linear:
            continue
        parts = _summands(arg) or _distribute(g, arg)  # a sum, or a linear op of one, ...
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


class _Assembler:
    """Shared pieces of the four kernels of one chunk program."""

    def __init__(self, io: KernelIO, forward: Graph, backward: Graph, allow_cube: bool):
        self.io, self.allow_cube = io, allow_cube
        self.fwd, self.bwd = to_dot_form(forward), to_dot_form(backward)
        states, rest, token, axes = io.states, io.rest, io.token, io.axes
        self.hidden = any(set(axes[s]) & {"h", "g"} for s in states)  # the state lives in memory, by blocks
        self.at = "(first_chunk + c)"
        self.tokens = {n: load(f"{n}_ptr", axes[n], "", True, _fill(n)) for n in rest if token[n]}
        self.static_loads = [f"{n} = {load(f'{n}_ptr', axes[n], 'row')}" for n in rest if not token[n]]
        self.made = stored_values(self.fwd)
        self.kept = [f"stored_{j}" for j in range(len(self.made))]
        self.reads = {n: load(f"{n}_ptr", v.axes, self.at) for n, v in zip(self.kept, self.made)}
        if not self.hidden:
            self.reads.update({s: load(f"starts_{s}_ptr", axes[s], self.at) for s in states})
        self.rest_args = [f"{n}_ptr" for n in rest]

    def sources(self, names: list[str], ptr: str, index: str) -> dict[str, tuple[str, str]]:
        return {n: (ptr.format(n), index) for n in names}

    def body(self, part: Graph, loads: dict, sources: dict | None = None, outputs: dict | None = None) -> Body:
        return body(part, self.allow_cube, loads, sources, outputs)


def kernels(io: KernelIO, forward: Graph, backward: Graph, suffix: str = "", allow_cube: bool = False) -> list[Kernel]:
    """The kernels of a chunk program, each from the part of the forward or backward program it needs:

    state_fwd   sequential over a sequence's chunks: the final state, and every chunk's start state (`starts`);
    out_fwd     the outputs of one chunk, from its stored start state;
    state_bwd   sequential, last chunk first: the initial state's adjoint, and the adjoint entering every
                chunk's end (`carries`);
    grad_<x>_<j>_bwd  one kernel per input x and summand j of its gradient (a path by which x reaches the outputs):
                from the chunk's start state and carry (the launcher adds the terms, and sums a static gate's or
                parameter's gradient over chunks).
    out_fwd and grad kernels run one chunk per program (all chunks at once) unless they keep values in scratch
    memory, then one sequence per program. Splitting by job keeps each kernel's live tiles few (registers, no
    spills) and makes most of them parallel over chunks, as flash-linear-attention splits chunk_fwd_h from
    chunk_fwd_o."""
    a = _Assembler(io, forward, backward, allow_cube)
    out = [_state_forward(a, suffix), _outputs(a, suffix), _state_backward(a, suffix)]
    out += _gradients(a, suffix)
    return out


def _state_forward(a: _Assembler, suffix: str) -> Kernel:
    states, axes = a.io.states, a.io.axes
    part = _only(a.fwd, [f"new_{s}" for s in states])
    part.outputs.update({n: v for n, v in zip(a.kept, stored_values(part))})
    if len(stored_values(part)) != len(a.made):
        raise ValueError("a stored value of the chunk program is not made by its state pass")
    args = ([f"{s}_ptr" for s in states] + a.rest_args + [f"final_{s}_ptr" for s in states] +
            [f"starts_{s}_ptr" for s in states] + [f"{n}_ptr" for n in a.kept])
    keep = [store(f"{n}_ptr", part.outputs[n].axes, a.at, name(part.outputs[n])) for n in a.kept]
    doc = "the final state and every chunk's start state (and the values stored per chunk)"
    if not a.hidden:  # the state in registers, carried from chunk to chunk
        b = a.body(part, a.tokens)
        loop = ([store(f"starts_{s}_ptr", axes[s], a.at, s) for s in states] + b.lines + keep +
                [f"{s} = {name(part.outputs['new_' + s])}" for s in states])
        return Kernel(f"chunk_state_fwd_kernel{suffix}", doc, "up", args,
                      [f"{s} = {load(f'{s}_ptr', axes[s], 'pid')}" for s in states] + a.static_loads, loop,
                      [store(f"final_{s}_ptr", axes[s], "pid", s) for s in states], b.scratch,
                      value_blocks="columns" if not b.scratch and value_local(part) else "none")
    # the state in memory: chunk c reads starts[c] and writes starts[c + 1] (the final state after the last chunk)
    last = "(c + 1) * C >= seq_len"
    outputs = {f"new_{s}": [(f"starts_{s}_ptr", f"({a.at} + 1)", "(c + 1) * C < seq_len"),
                            (f"final_{s}_ptr", "pid", last)] for s in states}
    b = a.body(part, a.tokens, a.sources(states, "starts_{}_ptr", a.at), outputs)
    prologue = a.static_loads + _copy_blocks(states, axes, "{}_ptr", "pid", "starts_{}_ptr", "first_chunk")
    return Kernel(f"chunk_state_fwd_kernel{suffix}", doc, "up", args + ["scratch_ptr"], prologue,
                  b.lines + keep + ["tl.debug_barrier()  # the next chunk reads the state this one wrote"], [],
                  b.scratch)


def _copy_blocks(states: list[str], axes: dict, src: str, src_index: str, dst: str, dst_index: str) -> list[str]:
    """Copy hidden-axis state matrices block by block (the program's own threads read them back after a barrier)."""
    lines = ["for hb in range(0, HID, BH):", "    offs_h = hb + tl.arange(0, BH)", "    offs_g = offs_h"]
    for s in states:
        lines.append(f"    {store(dst.format(s), axes[s], dst_index, load(src.format(s), axes[s], src_index))}")
    return lines + ["tl.debug_barrier()"]


def _outputs(a: _Assembler, suffix: str) -> Kernel:
    part = _only(a.fwd, ["out"])
    part = _stored_as_inputs(part) if a.made else part
    sources = a.sources(a.io.states, "starts_{}_ptr", a.at) if a.hidden else None
    b = a.body(part, {**a.tokens, **a.reads}, sources)
    args = [f"starts_{s}_ptr" for s in a.io.states] + a.rest_args + [f"{n}_ptr" for n in a.kept] + ["out_ptr"]
    mode = "up" if b.scratch else "chunk"
    return Kernel(f"chunk_out_fwd_kernel{suffix}", "one chunk's outputs, from its stored start state", mode,
                  args + (["scratch_ptr"] if b.scratch else []), a.static_loads,
                  b.lines + [store("out_ptr", part.outputs["out"].axes, "", name(part.outputs["out"]), token=True)],
                  [], b.scratch, value_blocks="columns" if not a.hidden and not b.scratch and value_local(part)
                  else "none")


def _state_backward(a: _Assembler, suffix: str) -> Kernel:
    states, axes = a.io.states, a.io.axes
    bwd = _stored_as_inputs(a.bwd) if a.made else a.bwd
    part = _only(bwd, [f"d_{s}" for s in states])
    loads = {**a.tokens, **a.reads, "d_out": load("d_out_ptr", bwd.inputs["d_out"].axes, "", True)}
    args = ([f"starts_{s}_ptr" for s in states] + a.rest_args + [f"{n}_ptr" for n in a.kept] + ["d_out_ptr"] +
            [f"d_final_{s}_ptr" for s in states] + [f"d_init_{s}_ptr" for s in states] +
            [f"carries_{s}_ptr" for s in states])
    doc = "the initial state's adjoint and the adjoint entering every chunk's end"
    if not a.hidden:
        b = a.body(part, {**loads, **{f"d_new_{s}": f"carry_{s}" for s in states}})
        loop = ([store(f"carries_{s}_ptr", axes[s], a.at, f"carry_{s}") for s in states] + b.lines +
                [f"carry_{s} = {name(part.outputs['d_' + s])}" for s in states])
        return Kernel(f"chunk_state_bwd_kernel{suffix}", doc, "down", args,
                      [f"carry_{s} = {load(f'd_final_{s}_ptr', axes[s], 'pid')}" for s in states] + a.static_loads,
                      loop, [store(f"d_init_{s}_ptr", axes[s], "pid", f"carry_{s}") for s in states], b.scratch,
                      value_blocks="columns" if not b.scratch and value_local(part) else "none")
    # in memory: chunk c reads carries[c] (the last chunk's is d_final) and writes carries[c - 1], or d_init
    sources = {**a.sources(states, "starts_{}_ptr", a.at),
               **{f"d_new_{s}": (f"carries_{s}_ptr", a.at) for s in states}}
    outputs = {f"d_{s}": [(f"carries_{s}_ptr", f"({a.at} - 1)", "c > 0"), (f"d_init_{s}_ptr", "pid", "c == 0")]
               for s in states}
    b = a.body(part, loads, sources, outputs)
    last = "(first_chunk + tl.cdiv(seq_len, C) - 1)"
    prologue = a.static_loads + _copy_blocks(states, axes, "d_final_{}_ptr", "pid", "carries_{}_ptr", last)
    return Kernel(f"chunk_state_bwd_kernel{suffix}", doc, "down", args + ["scratch_ptr"], prologue,
                  b.lines + ["tl.debug_barrier()  # the previous chunk reads the adjoint this one wrote"], [],
                  b.scratch)


def _gradients(a: _Assembler, suffix: str) -> list[Kernel]:
    states, rest, token, axes = a.io.states, a.io.rest, a.io.token, a.io.axes
    bwd = _stored_as_inputs(a.bwd) if a.made else a.bwd
    loads = {**a.tokens, **a.reads, "d_out": load("d_out_ptr", bwd.inputs["d_out"].axes, "", True)}
    if a.hidden:
        sources = {**a.sources(states, "starts_{}_ptr", a.at),
                   **{f"d_new_{s}": (f"carries_{s}_ptr", a.at) for s in states}}
    else:
        sources = None
        loads.update({f"d_new_{s}": load(f"carries_{s}_ptr", axes[s], a.at) for s in states})
    out = []
    for n in rest:  # one kernel per input and summand: each recomputes only what its own term needs
        # An MLP memory's terms are split once only: each recomputes the memory's forward pass, which alone
        # fills the registers (titans, C = D = 64, bf16: split into up to 13 terms per gradient, 54 of its 65 term
        # kernels still spilled, 16 B to 2.7 KB), so splitting further multiplied the recomputation, not the fits.
        for j, term in enumerate(gradient_terms(bwd, n, deeper=not a.hidden)):
            part = _only(term, ["term"])
            b = a.body(part, loads, sources)
            g = name(part.outputs["term"])
            # a value block's share of a sum over the value axis goes to its own copy of the gradient (the
            # launcher adds the copies); grad_block_stride is 0 for a kernel that does not run by value blocks
            ptr = "grad_block_ptr"
            grad = (store(ptr, axes[n], "", g, token=True) if token[n] else store(ptr, axes[n], a.at, g, mask="nv > 0"))
            args = ([f"starts_{s}_ptr" for s in states] + [f"carries_{s}_ptr" for s in states] + a.rest_args +
                    [f"{k}_ptr" for k in a.kept] + ["d_out_ptr", f"grad_{n}_ptr", "grad_block_stride"])
            kinds = None if a.hidden or b.scratch else value_kinds(part)
            blocks = "none" if kinds is None else kinds[part.outputs["term"].id]
            blocks = "none" if blocks == "whole" else blocks
            prologue = a.static_loads + [f"grad_block_ptr = grad_{n}_ptr + tl.program_id(2) * grad_block_stride"]
            out.append(Kernel(f"chunk_grad_{n}_{j}_bwd_kernel{suffix}", f"term {j} of the gradient of one chunk's "
                              f"`{n}`", "up" if b.scratch else "chunk", args + (["scratch_ptr"] if b.scratch else []),
                              prologue, b.lines + [grad], [], b.scratch, value_blocks=blocks))
    return out


__all__ = ["VALUE_AXIS", "Body", "Kernel", "KernelIO", "body", "describe", "gradient_terms", "kernels",
           "load", "offsets", "schedule", "store", "stored_values", "value_kinds", "value_local"]
