"""The kernels of a spec, assembled from its chunk programs (the lines of each value come from mirasc.emit_triton).

Four jobs, each emitted from the part of the forward or backward program it needs (`kernels`): the state pass,
the outputs, the backward state pass and one kernel per input and summand of its gradient. Within a kernel the
values are emitted in the order mirasc.kernel_plan's `schedule` chooses; kernel_plan also decides which kernels run
by blocks of the value axis and how a gradient is split into terms.

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
from .kernel_plan import VALUE_AXIS, gradient_terms, schedule, value_kinds, value_local

# Values worth making once per chunk and storing, rather than recomputing in every kernel that reads them: state-
# free and expensive (the triangular inverse is C substitution steps over (C, C) tiles).
STORED_OPS = (ir.TriInverse,)
def offsets(value_blocks: bool) -> list[str]:
    """Each axis's offsets in a register tile. A value-blocked kernel's program (grid axis 2) holds the value axis's
    block program_id(2); any other kernel keeps a plain arange, since the offset costs registers where a kernel is
    already tight (titans, C = D = 64, bf16: its backward state pass spilled 3,880 B instead of 3,088 B with it)."""
    start = {VALUE_AXIS: "tl.program_id(2) * BV + "} if value_blocks else {}
    return [f"offs_{a} = {start.get(a, '')}tl.arange(0, {SHAPE[a]})" for a in ir.AXIS_ORDER]


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


def body(graph: Graph, loads: dict[str, str] | None = None,
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
                lines += _with_hint(seg, line(seg))
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
            inside += _with_hint(v, line(v))
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
    pad: dict[str, float]  # what a token past the sequence's end reads for each of `rest` (mirasc.lower.ChunkInput)


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


def stored_values(graph: Graph) -> list[Value]:
    return [v for v in graph.values if isinstance(v.op, STORED_OPS)]


class _Assembler:
    """Shared pieces of the four kernels of one chunk program."""

    def __init__(self, io: KernelIO, forward: Graph, backward: Graph):
        self.io = io
        self.fwd, self.bwd = to_dot_form(forward), to_dot_form(backward)
        states, rest, token, axes = io.states, io.rest, io.token, io.axes
        self.hidden = any(set(axes[s]) & {"h", "g"} for s in states)  # the state lives in memory, by blocks
        self.at = "(first_chunk + c)"
        self.tokens = {n: load(f"{n}_ptr", axes[n], "", True, io.pad[n]) for n in rest if token[n]}
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
        return body(part, loads, sources, outputs)


def kernels(io: KernelIO, forward: Graph, backward: Graph) -> list[Kernel]:
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
    a = _Assembler(io, forward, backward)
    out = [_state_forward(a), _outputs(a), _state_backward(a)]
    out += _gradients(a)
    return out


def _state_forward(a: _Assembler) -> Kernel:
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
        return Kernel("chunk_state_fwd_kernel", doc, "up", args,
                      [f"{s} = {load(f'{s}_ptr', axes[s], 'pid')}" for s in states] + a.static_loads, loop,
                      [store(f"final_{s}_ptr", axes[s], "pid", s) for s in states], b.scratch,
                      value_blocks="columns" if not b.scratch and value_local(part) else "none")
    # the state in memory: chunk c reads starts[c] and writes starts[c + 1] (the final state after the last chunk)
    last = "(c + 1) * C >= seq_len"
    outputs = {f"new_{s}": [(f"starts_{s}_ptr", f"({a.at} + 1)", "(c + 1) * C < seq_len"),
                            (f"final_{s}_ptr", "pid", last)] for s in states}
    b = a.body(part, a.tokens, a.sources(states, "starts_{}_ptr", a.at), outputs)
    prologue = a.static_loads + _copy_blocks(states, axes, "{}_ptr", "pid", "starts_{}_ptr", "first_chunk")
    return Kernel("chunk_state_fwd_kernel", doc, "up", args + ["scratch_ptr"], prologue,
                  b.lines + keep + ["tl.debug_barrier()  # the next chunk reads the state this one wrote"], [],
                  b.scratch)


def _copy_blocks(states: list[str], axes: dict, src: str, src_index: str, dst: str, dst_index: str) -> list[str]:
    """Copy hidden-axis state matrices block by block (the program's own threads read them back after a barrier)."""
    lines = ["for hb in range(0, HID, BH):", "    offs_h = hb + tl.arange(0, BH)", "    offs_g = offs_h"]
    for s in states:
        lines.append(f"    {store(dst.format(s), axes[s], dst_index, load(src.format(s), axes[s], src_index))}")
    return lines + ["tl.debug_barrier()"]


def _outputs(a: _Assembler) -> Kernel:
    part = _only(a.fwd, ["out"])
    part = _stored_as_inputs(part) if a.made else part
    sources = a.sources(a.io.states, "starts_{}_ptr", a.at) if a.hidden else None
    b = a.body(part, {**a.tokens, **a.reads}, sources)
    args = [f"starts_{s}_ptr" for s in a.io.states] + a.rest_args + [f"{n}_ptr" for n in a.kept] + ["out_ptr"]
    mode = "up" if b.scratch else "chunk"
    return Kernel("chunk_out_fwd_kernel", "one chunk's outputs, from its stored start state", mode,
                  args + (["scratch_ptr"] if b.scratch else []), a.static_loads,
                  b.lines + [store("out_ptr", part.outputs["out"].axes, "", name(part.outputs["out"]), token=True)],
                  [], b.scratch, value_blocks="columns" if not a.hidden and not b.scratch and value_local(part)
                  else "none")


def _state_backward(a: _Assembler) -> Kernel:
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
        return Kernel("chunk_state_bwd_kernel", doc, "down", args,
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
    return Kernel("chunk_state_bwd_kernel", doc, "down", args + ["scratch_ptr"], prologue,
                  b.lines + ["tl.debug_barrier()  # the previous chunk reads the adjoint this one wrote"], [],
                  b.scratch)


def _gradients(a: _Assembler) -> list[Kernel]:
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
            out.append(Kernel(f"chunk_grad_{n}_{j}_bwd_kernel", f"term {j} of the gradient of one chunk's "
                              f"`{n}`", "up" if b.scratch else "chunk", args + (["scratch_ptr"] if b.scratch else []),
                              prologue, b.lines + [grad], [], b.scratch, value_blocks=blocks))
    return out


__all__ = ["Body", "Kernel", "KernelIO", "body", "describe", "kernels", "load", "offsets", "store", "stored_values"]
