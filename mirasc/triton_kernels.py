"""The kernels of a spec, assembled from its chunk programs (the lines of each value come from mirasc.emit_triton).

Four jobs, each emitted from the part of the forward or backward program it needs (`kernels`): the state pass
(with, before it, the chunk-parallel kernel making the stored values, the UT transform, where no state reaches them),
the outputs, the backward state pass (with, before it, the chunk-parallel kernel making the values of it that need
no adjoint from the next chunk: `carry_free`) and one kernel per input and summand of its gradient. Within a kernel the
values are emitted in the order mirasc.kernel_plan's `schedule` chooses; kernel_plan also decides which kernels run
by blocks of the value axis and how a gradient is split into terms.

An MLP memory's hidden axis is made in blocks of BH inside loops over the blocks (mirasc.kernel_body, which
writes each chunk's lines and the loads and stores around them). The hidden-axis state matrices then live in
memory: the state pass reads a chunk's start state from `starts` and writes the next one there, the backward state
pass likewise with `carries`, and a block made in one loop and read in another goes through the program's scratch
memory (one slot per program; the launcher runs chunk kernels with scratch in waves that fit its budget). The
factors of a channel-decay product go through the same scratch memory (mirasc.emit_triton.decayed_product).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import ir
from .dotform import is_dot, to_dot_form
from .emit_triton import (
    SHAPE,
    name,
)
from .ir import Graph, Value
from .kernel_body import ROW_LOOP, Body, body, load, store
from .kernel_plan import VALUE_AXIS, gradient_terms, value_kinds, value_local
from .token_blocks import token_blocked_body

# Values worth making once per chunk and storing, rather than recomputing in every kernel that reads them: state-
# free and expensive (the triangular inverse is C substitution steps over (C, C) tiles).
STORED_OPS = (ir.TriInverse,)
def offsets(value_blocks: bool) -> list[str]:
    """Each axis's offsets in a register tile. A value-blocked kernel's program (grid axis 2) holds the value axis's
    block program_id(2); any other kernel keeps a plain arange, since the offset costs registers where a kernel is
    already tight (titans, C = D = 64, bf16: its backward state pass spilled 3,880 B instead of 3,088 B with it)."""
    return [f"offs_{a} = {_index_vector(a, value_blocks)}" for a in ir.AXIS_ORDER]


def _index_vector(axis: str, value_blocks: bool) -> str:
    """The expression of one axis's offsets (`offsets`)."""
    start = "tl.program_id(2) * BV + " if value_blocks and axis == VALUE_AXIS else ""
    return f"{start}tl.arange(0, {SHAPE[axis]})"


# A kernel that walks the chunks (a state pass) can make its index vectors again at the top of every chunk, each one
# opaque to the compiler (the module's `private_index`), where the constexpr INDEX_PER_CHUNK is set. Made once before
# the loop, the vectors and every layout and address tile derived from them are loop-invariant, so the compiler makes
# them once and holds them through every chunk, where they can spill: TTT-Linear's backward state pass at sm_90a,
# D = 64 spilled 224 B, 31 spill instructions on the line making offs_t (`mirasc aot`'s spill sites), and 96 B with
# its vectors made per chunk. It is not the default: the MLP memories' passes spilled up to three times more that way
# (titans' backward pass 472 -> 1,440 B), and TTT-Linear's at sm_80, D = 128 too (3,792 -> 4,728), so it is a
# candidate of the spill guard (mirasc.backends.tuning.candidates). A hidden-block loop makes its block's vectors
# (offs_h, offs_g) itself. TTT-Linear's passes, the kernels the guard gave it to, now run by sub-chunks
# (mirasc.token_blocks); mirasc aot of TTT-Linear at sm_80 and sm_90a, D = 64 and 128, and of Yaad and TTT-MLP at
# sm_90a, D = 64 (2026-12-06) gave it to no kernel.
_PER_CHUNK_AXES = tuple(a for a in ir.AXIS_ORDER if a not in ("h", "g"))


def chunk_offsets(value_blocks: bool) -> list[str]:
    """The index vectors a chunk-walking kernel makes again for each chunk (`_PER_CHUNK_AXES`)."""
    return [f"offs_{a} = private_index({_index_vector(a, value_blocks)}, {SHAPE[a]}, tok, ON_GPU)"
            for a in _PER_CHUNK_AXES]


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
    tiles: float = 0.0  # the most register tiles live at once (Body.tiles): the launcher's warps follow it
    sub_chunked: bool = False  # it takes the sub-chunk BC (Body.sub_chunked), which the launcher chooses
    channel_blocked: bool = False  # its channel-decay products go by blocks of BK (Body.channel_blocked)
    # values it writes for every chunk, [n_chunks, axes...], for a later kernel to read (name, axes)
    makes: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    @property
    def swappable(self) -> bool:
        """It makes a product whose result is transposed, written both ways (emit_triton.dot_expr)."""
        return any("SWAP_PRODUCTS" in line for line in (*self.prologue, *self.loop, *self.epilogue))

    @property
    def rereads(self) -> bool:
        """It can load input tiles again rather than hold them through its loops (kernel_body, REREAD_INPUTS)."""
        lines = (*self.prologue, *self.loop, *self.epilogue)
        return any(line.lstrip().startswith("if REREAD_INPUTS:") for line in lines)

    @property
    def row_blocked(self) -> bool:
        """It makes a stretch of values token by token, by blocks of BR rows (kernel_body, row blocks)."""
        return any(line.lstrip().startswith(ROW_LOOP) for line in (*self.prologue, *self.loop, *self.epilogue))

    @property
    def holds_params(self) -> bool:
        """It can load its per-row parameters once, before its chunk loop (PARAMS_ONCE; _Assembler.params_once)."""
        return any(line.startswith("if PARAMS_ONCE:") for line in self.prologue)

    @property
    def offsets(self) -> list[str]:
        return offsets(self.value_blocks != "none")

    @property
    def chunk_offsets(self) -> list[str]:
        """The index vectors made again at the top of each chunk, in a kernel that walks the chunks."""
        return chunk_offsets(self.value_blocks != "none") if self.mode in ("up", "down") else []


def _only(graph: Graph, names: list[str]) -> Graph:
    """The part of `graph` that computes the named outputs."""
    part = ir.rebuild(graph, lambda v: True)
    part.outputs = {n: part.outputs[n] for n in names}
    return ir.prune(part)


def _stored_as_inputs(graph: Graph) -> Graph:
    """`graph` with its stored values (STORED_OPS, in graph order: `stored_0`, ...) read as inputs instead."""
    stored = [v for v in graph.values if isinstance(v.op, STORED_OPS)]
    return _read_as_inputs(graph, {v.id: f"stored_{j}" for j, v in enumerate(stored)})


def _read_as_inputs(graph: Graph, names: dict[int, str]) -> Graph:
    """`graph` with the named values (by id) read as inputs of those names instead of computed."""
    new = Graph()
    mapped: dict[int, Value] = {}
    for v in graph.values:
        if v.id in names:
            mapped[v.id] = new.input(names[v.id], v.axes, v.batched)
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
        self.tokens = {n: load(f"{n}_ptr", axes[n], "", True, io.pad[n], self.hidden) for n in rest if token[n]}
        static = {n: load(f"{n}_ptr", axes[n], "row") for n in rest if not token[n]}
        # a per-row parameter (a LayerNorm's weight): with the state in memory, loaded where read and again after
        # the hidden-block loops that do not read it (kernel_body's parking), since held from the prologue through
        # them it spilled (Moneta's outputs kernel, sm_90a, D = 64: 224 B a thread, 72 so); else once, before the
        # chunk loop
        self.static = static if self.hidden else {}
        self.static_loads = [] if self.hidden else [f"{n} = {x}" for n, x in static.items()]
        self.made = stored_values(self.fwd)
        self.kept = [f"stored_{j}" for j in range(len(self.made))]
        self.reads = {n: load(f"{n}_ptr", v.axes, self.at) for n, v in zip(self.kept, self.made)}
        if not self.hidden:
            self.reads.update({s: load(f"starts_{s}_ptr", axes[s], self.at) for s in states})
        self.rest_args = [f"{n}_ptr" for n in rest]
        # where a kernel reads the hidden-axis state's blocks: the chunk's start state (the state lives in memory)
        self.starts = self.sources(states, "starts_{}_ptr", self.at) if self.hidden else None
        # the backward program with the state pass's carry-free values read (made by the local_bwd kernel)
        self.local, self.backward = _carry_free_split(_stored_as_inputs(self.bwd) if self.made else self.bwd, states)
        local = self.local.outputs if self.local else {}
        self.local_args = [f"{n}_ptr" for n in local]
        # an MLP memory's kernels read them with offsets of their own, as the token tiles (kernel_body._private)
        self.local_reads = {n: load(f"{n}_ptr", v.axes, self.at, private=self.hidden) for n, v in local.items()}
        self.d_out = load("d_out_ptr", self.bwd.inputs["d_out"].axes, "", True, private=self.hidden)  # a token tile

    def sources(self, names: list[str], ptr: str, index: str) -> dict[str, tuple[str, str]]:
        return {n: (ptr.format(n), index) for n in names}

    def body(self, part: Graph, loads: dict, sources: dict | None = None, outputs: dict | None = None,
             reload_locals: bool = False, early_stores: dict[str, str] | None = None,
             block_stores: dict[str, str] | None = None, walks_chunks: bool = False,
             by_columns: bool = False) -> Body:
        """The lines of `part`; in a kernel that walks the chunks (`walks_chunks`), the per-row parameters' loads
        under `if not PARAMS_ONCE:` (`params_once`). With the state in memory, the channel-decay products of a
        chunk-parallel kernel go by blocks of channel columns (kernel_body's channel_blocks), unless it runs by value
        blocks (`by_columns`), whose BV columns are already a block. Not in a kernel walking the chunks: Yaad's
        backward state pass spilled 2,184 B a thread by channel blocks at sm_90a, D = 128 (its default config), 1,072
        without, most of it at the head of the chunk loop; at D = 64 48 against 32 (the spill guard's config)."""
        reloadable = frozenset(self.static) | frozenset(self.local_reads if reload_locals else ())
        return body(part, {**self.static, **loads}, sources, outputs, reloadable=reloadable,
                    early_stores=early_stores, block_stores=block_stores,
                    held=frozenset(self.static) if walks_chunks else frozenset(),
                    channel_blocks=self.hidden and not by_columns and not walks_chunks)

    def params_once(self, part: Graph) -> list[str]:
        """A state pass's per-row parameters loaded once, before its chunk loop, where the constexpr PARAMS_ONCE is
        set (a spill guard candidate and refinement), and held through every chunk; else each chunk loads them where
        it reads them (`body`). Neither is better in every pass, nor in one pass under every config: the backward
        state passes at sm_90a, D = 64, per chunk against once, titans' 112 B a thread against 96 (its inputs read
        again), Yaad's 40 against 24 (its chunk one sub-chunk), TTT-MLP's 40 against 16 (its default), but Moneta's
        272 against 304 (its products swapped) and Memora's 232 against 296 (its chunk one sub-chunk)
        (bench/README.md, "Parameters once per state pass")."""
        read = {a.id for v in part.values for a in v.args}
        names = [n for n in self.static if n in part.inputs and part.inputs[n].id in read]
        if not names:
            return []
        return (["if PARAMS_ONCE:  # the per-row parameters, held through the chunks"] +
                [f"    {n} = {self.static[n]}" for n in names])


def kernels(io: KernelIO, forward: Graph, backward: Graph) -> list[Kernel]:
    """The kernels of a chunk program, each from the part of the forward or backward program it needs:

    stored_fwd  the stored values (the UT transform), one chunk per program, all chunks at once, when no state
                reaches them (`_stored_first`; else state_fwd makes them);
    state_fwd   sequential over a sequence's chunks: the final state, and every chunk's start state (`starts`);
    out_fwd     the outputs of one chunk, from its stored start state;
    local_bwd   the backward state pass's values that need no adjoint from the next chunk (`carry_free`), one
                chunk per program, all chunks at once, stored per chunk for state_bwd and the gradient kernels
                (only where there are such values);
    state_bwd   sequential, last chunk first: the initial state's adjoint, and the adjoint entering every
                chunk's end (`carries`);
    grad_<x>_<j>_bwd  one kernel per input x and summand j of its gradient (a path by which x reaches the outputs):
                from the chunk's start state and carry (the launcher adds the terms, and sums a static gate's or
                parameter's gradient over chunks).
    out_fwd and grad kernels run one chunk per program, all chunks at once; one that keeps values in scratch memory
    gets a scratch slot per program and runs in waves of chunks the launcher sizes to its scratch budget. Splitting
    by job keeps each kernel's live tiles few (registers, no spills) and makes all but the two state passes parallel
    over chunks, as flash-linear-attention splits chunk_fwd_h from chunk_fwd_o. A chunk per program also keeps a
    kernel free of a chunk loop, whose loop-invariant index and mask tiles Triton hoists out of the loop and holds in
    registers across it: titans' kernels spilled about twice as much walking their sequence's chunks (mirasc aot,
    C = D = 64, bf16, sm_90a: the outputs kernel 352 -> 64 B, its 26 chunk kernels 25,048 -> 13,160 B in all)."""
    a = _Assembler(io, forward, backward)
    first = _stored_first(a)
    out = [*([first] if first else []), _state_forward(a, first is not None), _outputs(a)]
    out += _state_backward(a)
    out += _gradients(a)
    return out


def _reached(graph: Graph, inputs: set[str]) -> set[int]:
    """The ids of the values of `graph` that one of the named inputs reaches."""
    out: set[int] = set()
    for v in graph.values:
        if (isinstance(v.op, ir.Input) and v.op.name in inputs) or any(a.id in out for a in v.args):
            out.add(v.id)
    return out


def _per_chunk(a: _Assembler, job: str, doc: str, made: Graph, loads: dict, args: list[str],
               listed: bool = False, sources: dict | None = None) -> Kernel:
    """A kernel making `made`'s outputs for every chunk at once (one chunk per program), each stored to its own
    [n_chunks, axes...] buffer (a program past its sequence's last chunk writes nothing); `args` come before those
    buffers. By value blocks when every value column depends on its own column only. `listed`: the kernel names
    its outputs in `makes` (DESCRIPTION's "local")."""
    stores = {n: store(f"{n}_ptr", v.axes, a.at, name(v), mask="nv > 0") for n, v in made.outputs.items()}
    by_columns = value_local(made) and any(VALUE_AXIS in v.axes for v in made.values)
    b = a.body(made, loads, sources, early_stores=stores, by_columns=by_columns)
    lines = b.lines
    return Kernel(f"chunk_{job}_kernel", doc, "chunk", args + [f"{n}_ptr" for n in made.outputs] +
                  (["scratch_ptr"] if b.scratch else []), a.static_loads, lines, [], b.scratch,
                  value_blocks="columns" if by_columns else "none", tiles=b.tiles, sub_chunked=b.sub_chunked,
                  channel_blocked=b.channel_blocked,
                  makes=[(n, v.axes) for n, v in made.outputs.items()] if listed else [])


def _stored_first(a: _Assembler) -> Kernel | None:
    """The kernel making the stored values (the UT transform) for every chunk at once, before the state pass, when
    no state reaches them; else None, and the state pass makes them. A triangular inverse is C substitution steps
    over (C, C) tiles: in the state pass they would run one chunk after another (and again in every value block),
    where flash-linear-attention solves them in a parallel kernel (solve_tril) before chunk_fwd_h."""
    if not a.made or _reached(a.fwd, set(a.io.states)) & {v.id for v in a.made}:
        return None
    made = ir.prune(Graph(a.fwd.values, a.fwd.inputs, dict(zip(a.kept, a.made))))
    return _per_chunk(a, "stored_fwd", "one chunk's stored values, which no state reaches", made, a.tokens,
                      a.rest_args)


def _state_forward(a: _Assembler, stored_first: bool) -> Kernel:
    """The state pass; it makes the stored values as well unless a kernel before it does (`stored_first`)."""
    states, axes = a.io.states, a.io.axes
    part = _only(a.fwd, [f"new_{s}" for s in states])
    if len(stored_values(part)) != len(a.made):  # stored_j names the j-th in every kernel's program
        raise ValueError("a stored value of the chunk program is not read by its state pass")
    tokens = dict(a.tokens)
    if stored_first:
        part = _stored_as_inputs(part)
        tokens.update({n: a.reads[n] for n in a.kept})
        keep = []
    else:
        part.outputs.update({n: v for n, v in zip(a.kept, stored_values(part))})
        keep = [store(f"{n}_ptr", part.outputs[n].axes, a.at, name(part.outputs[n])) for n in a.kept]
    args = ([f"{s}_ptr" for s in states] + a.rest_args + [f"final_{s}_ptr" for s in states] +
            [f"starts_{s}_ptr" for s in states] + [f"{n}_ptr" for n in a.kept])
    doc = "the final state and every chunk's start state"
    if not stored_first:
        doc += " (and the values stored per chunk)"
    if not a.hidden:  # the state in registers, carried from chunk to chunk
        b = _state_in_registers(a, part, tokens)
        loop = ([store(f"starts_{s}_ptr", axes[s], a.at, s) for s in states] + b.lines + keep +
                [f"{s} = {name(part.outputs['new_' + s])}" for s in states])
        return Kernel("chunk_state_fwd_kernel", doc, "up", args + (["scratch_ptr"] if b.scratch else []),
                      [f"{s} = {load(f'{s}_ptr', axes[s], 'pid')}" for s in states] + a.static_loads, loop,
                      [store(f"final_{s}_ptr", axes[s], "pid", s) for s in states], b.scratch,
                      value_blocks="columns" if value_local(part) else "none", tiles=b.tiles, sub_chunked=b.sub_chunked)
    # the state in memory: chunk c reads starts[c] and writes starts[c + 1] (the final state after the last chunk)
    last = "(c + 1) * C >= seq_len"
    outputs = {f"new_{s}": [(f"starts_{s}_ptr", f"({a.at} + 1)", "(c + 1) * C < seq_len"),
                            (f"final_{s}_ptr", "pid", last)] for s in states}
    b = a.body(part, tokens, a.starts, outputs, walks_chunks=True)
    prologue = a.params_once(part) + _copy_blocks(states, axes, "{}_ptr", "pid", "starts_{}_ptr", "first_chunk")
    return Kernel("chunk_state_fwd_kernel", doc, "up", args + ["scratch_ptr"], prologue,
                  b.lines + keep + ["tl.debug_barrier()  # the next chunk reads the state this one wrote"], [],
                  b.scratch, tiles=b.tiles, sub_chunked=b.sub_chunked)


def _state_in_registers(a: _Assembler, part: Graph, loads: dict[str, str]) -> Body:
    """A state pass's chunk with the state in registers: a sub-chunk of tokens at a time where the state's value
    axis cannot be split among programs and the chunk's work is per token (mirasc.token_blocks), else whole."""
    blocked = None if value_local(part) else token_blocked_body(part, loads, a.body)
    return blocked or a.body(part, loads)


def _copy_blocks(states: list[str], axes: dict, src: str, src_index: str, dst: str, dst_index: str) -> list[str]:
    """Copy hidden-axis state matrices block by block (the program's own threads read them back after a barrier)."""
    lines = ["for hb in range(0, HID, BH):", "    offs_h = hb + tl.arange(0, BH)", "    offs_g = offs_h"]
    for s in states:
        lines.append(f"    {store(dst.format(s), axes[s], dst_index, load(src.format(s), axes[s], src_index))}")
    return lines + ["tl.debug_barrier()"]


def _outputs(a: _Assembler) -> Kernel:
    part = _only(a.fwd, ["out"])
    part = _stored_as_inputs(part) if a.made else part
    b = a.body(part, {**a.tokens, **a.reads}, a.starts)
    args = [f"starts_{s}_ptr" for s in a.io.states] + a.rest_args + [f"{n}_ptr" for n in a.kept] + ["out_ptr"]
    return Kernel("chunk_out_fwd_kernel", "one chunk's outputs, from its stored start state", "chunk",
                  args + (["scratch_ptr"] if b.scratch else []), a.static_loads,
                  b.lines + [store("out_ptr", part.outputs["out"].axes, "", name(part.outputs["out"]), token=True,
                                   private=a.hidden)],
                  [], b.scratch, value_blocks="columns" if not a.hidden and value_local(part) else "none",
                  tiles=b.tiles, sub_chunked=b.sub_chunked, channel_blocked=b.channel_blocked)


def carry_free(part: Graph, carries: set[str]) -> list[Value]:
    """The values of a backward state pass worth making for every chunk at once before it: each needs no adjoint
    carried in from the next chunk (`carries`), so no chunk waits for another to make it; a value that needs the
    adjoint reads it (the values only those read come with it); it is a chunk's tile of a token tensor (a token axis
    and one channel axis: as much memory as an input); and a matrix product makes it (anything less costs less to make
    again than to read). Where the value that the carried adjoint reads is another matrix, a (D, D) or (C, C) one, its
    token-tile operands are made first instead and the matrix is made again in the pass: TTT-Linear's adjoint gains
    q^T·g per chunk, g the (C, D) adjoint of the LayerNorm's input, which needs d_out, the chunk's start state and the
    LayerNorm's backward; reading g, its pass spilled 208 B where it spilled 992 (mirasc aot ttt_linear
    --head-dim 64, C = 64, bf16, sm_90a).

    The pass then reads them and drops whatever only they needed, as flash-linear-attention makes dv's chunk-local
    part (chunk_bwd_dv_local) before its backward state pass (chunk_bwd_dhu). Gated DeltaNet's backward state pass,
    mirasc aot gated_deltanet --head-dim 128 (C = 64, bf16, sm_90a): it made q·kᵀ and its product with d_out in every
    chunk, 608 B of stack; reading that product, none."""
    carried = _reached(part, carries)
    product: dict[int, bool] = {}
    for v in part.values:
        product[v.id] = v.id not in carried and (is_dot(v) or any(product[a.id] for a in v.args))
    seen: set[int] = set()
    frontier = [a for v in part.values if v.id in carried for a in v.args]
    while frontier:
        v = frontier.pop()
        if v.id in seen or not product[v.id]:
            continue
        seen.add(v.id)
        if not _token_tile(v) and len(v.axes) == 2:  # a matrix made from token tiles: those are made first instead
            frontier.extend(v.args)
    return [v for v in part.values if v.id in seen and _token_tile(v)]


def _carry_free_split(bwd: Graph, states: list[str]) -> tuple[Graph | None, Graph]:
    """The program making the backward state pass's carry-free values (`local_0`, ...; None if none), and the
    backward program reading them wherever it has them (the gradient kernels too). An MLP memory's are the chunk's
    per-token forward and inner-loss values that the adjoint reads (titans: 11 (C, D) tiles), made over the hidden
    blocks from the chunk's start state; reading them, its gradient kernels no longer make the chunk's forward pass
    again each (bench/README.md, "The MLP memories' carry-free values")."""
    part = _only(bwd, [f"d_{s}" for s in states])
    free = carry_free(part, {f"d_new_{s}" for s in states})
    if not free:
        return None, bwd
    made = ir.prune(Graph(part.values, part.inputs, {f"local_{j}": v for j, v in enumerate(free)}))
    shared = Graph()  # both programs' values hash-consed into one graph, where equal values are one value
    in_part, in_bwd = _interned(part, shared), _interned(bwd, shared)
    local = {in_part[v.id].id: f"local_{j}" for j, v in enumerate(free)}
    return made, _read_as_inputs(bwd, {v.id: local[in_bwd[v.id].id] for v in bwd.values if in_bwd[v.id].id in local})


def _interned(graph: Graph, into: Graph) -> dict[int, Value]:
    """Each value of `graph` (by id) as a value of `into`, added there unless an equal one is there already."""
    mapped: dict[int, Value] = {}
    for v in graph.values:
        if isinstance(v.op, ir.Input):
            mapped[v.id] = into.inputs.get(v.op.name) or into.input(v.op.name, v.axes, v.batched)
        else:
            mapped[v.id] = into._add(v.op, tuple(mapped[a.id] for a in v.args), v.axes, v.batched, v.hint)
    return mapped


def _token_tile(v: Value) -> bool:
    return len(v.axes) == 2 and v.axes[0] in ir.TOKEN_AXES and v.axes[1] in (VALUE_AXIS, "i")


def _state_backward(a: _Assembler) -> list[Kernel]:
    """The backward state pass, and before it the kernel making its carry-free values (`carry_free`), if any."""
    states, axes = a.io.states, a.io.axes
    bwd = a.backward
    part = _only(bwd, [f"d_{s}" for s in states])
    loads = {**a.tokens, **a.reads, **a.local_reads, "d_out": a.d_out}
    first = [_local_values(a)] if a.local else []
    args = ([f"starts_{s}_ptr" for s in states] + a.rest_args + [f"{n}_ptr" for n in a.kept] + a.local_args +
            ["d_out_ptr"] + [f"d_final_{s}_ptr" for s in states] + [f"d_init_{s}_ptr" for s in states] +
            [f"carries_{s}_ptr" for s in states])
    doc = "the initial state's adjoint and the adjoint entering every chunk's end"
    if not a.hidden:
        b = _state_in_registers(a, part, {**loads, **{f"d_new_{s}": f"carry_{s}" for s in states}})
        loop = ([store(f"carries_{s}_ptr", axes[s], a.at, f"carry_{s}") for s in states] + b.lines +
                [f"carry_{s} = {name(part.outputs['d_' + s])}" for s in states])
        return first + [Kernel(
            "chunk_state_bwd_kernel", doc, "down", args + (["scratch_ptr"] if b.scratch else []),
            [f"carry_{s} = {load(f'd_final_{s}_ptr', axes[s], 'pid')}" for s in states] + a.static_loads,
            loop, [store(f"d_init_{s}_ptr", axes[s], "pid", f"carry_{s}") for s in states], b.scratch,
            value_blocks="columns" if value_local(part) else "none", tiles=b.tiles, sub_chunked=b.sub_chunked)]
    # in memory: chunk c reads carries[c] (the last chunk's is d_final) and writes carries[c - 1], or d_init
    sources = {**a.starts,
               **{f"d_new_{s}": (f"carries_{s}_ptr", a.at) for s in states}}
    outputs = {f"d_{s}": [(f"carries_{s}_ptr", f"({a.at} - 1)", "c > 0"), (f"d_init_{s}_ptr", "pid", "c == 0")]
               for s in states}
    # the carry-free values are parked by loading them again, as in the gradient kernels: holding them through the
    # pass's loops spilled more in every MLP memory's pass (bench/README.md, "The backward state pass loads its
    # carry-free values again")
    b = a.body(part, loads, sources, outputs, reload_locals=True, walks_chunks=True)
    last = "(first_chunk + tl.cdiv(seq_len, C) - 1)"
    prologue = a.params_once(part) + _copy_blocks(states, axes, "d_final_{}_ptr", "pid", "carries_{}_ptr", last)
    return first + [Kernel(
        "chunk_state_bwd_kernel", doc, "down", args + ["scratch_ptr"], prologue,
        b.lines + ["tl.debug_barrier()  # the previous chunk reads the adjoint this one wrote"], [],
        b.scratch, tiles=b.tiles, sub_chunked=b.sub_chunked)]


def _local_values(a: _Assembler) -> Kernel:
    """One chunk's carry-free values of the backward state pass."""
    made = a.local
    loads = {**a.tokens, **a.reads, "d_out": a.d_out}
    args = [f"starts_{s}_ptr" for s in a.io.states] + a.rest_args + [f"{n}_ptr" for n in a.kept] + ["d_out_ptr"]
    return _per_chunk(a, "local_bwd", "one chunk's values of the backward state pass that need no adjoint from the "
                      "next chunk", made, loads, args, listed=True, sources=a.starts)


def _gradient_term(a: _Assembler, part: Graph, loads: dict[str, str], sources: dict | None, grad: str,
                   blocks: str) -> Body:
    """One gradient term's lines: a sub-chunk of tokens at a time where its work is per token and its kernel holds
    whole value rows (mirasc.token_blocks; TTT-Linear's LayerNorm terms), else the whole chunk."""
    def emit(graph: Graph, graph_loads: dict[str, str]) -> Body:
        return a.body(graph, graph_loads, sources, reload_locals=True)

    blocked = None
    if not a.hidden and blocks == "none":
        blocked = token_blocked_body(part, loads, emit, {"term": grad})
    return blocked or a.body(part, loads, sources, reload_locals=True, block_stores={"term": grad})


def _gradients(a: _Assembler) -> list[Kernel]:
    states, rest, token, axes = a.io.states, a.io.rest, a.io.token, a.io.axes
    bwd = a.backward
    loads = {**a.tokens, **a.reads, **a.local_reads, "d_out": a.d_out}
    if a.hidden:
        sources = {**a.starts,
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
            g = name(part.outputs["term"])
            # a value block's share of a sum over the value axis goes to its own copy of the gradient (the
            # launcher adds the copies); grad_block_stride is 0 for a kernel that does not run by value blocks
            ptr = "grad_block_ptr"
            grad = (store(ptr, axes[n], "", g, token=True, private=a.hidden) if token[n]
                    else store(ptr, axes[n], a.at, g, mask="nv > 0"))
            kinds = None if a.hidden else value_kinds(part)
            blocks = "none" if kinds is None else kinds[part.outputs["term"].id]
            blocks = "none" if blocks == "whole" else blocks
            b = _gradient_term(a, part, loads, sources, grad, blocks)
            args = ([f"starts_{s}_ptr" for s in states] + [f"carries_{s}_ptr" for s in states] + a.rest_args +
                    [f"{k}_ptr" for k in a.kept] + a.local_args + ["d_out_ptr", f"grad_{n}_ptr", "grad_block_stride"])
            prologue = a.static_loads + [f"grad_block_ptr = grad_{n}_ptr + tl.program_id(2) * grad_block_stride"]
            out.append(Kernel(f"chunk_grad_{n}_{j}_bwd_kernel", f"term {j} of the gradient of one chunk's "
                              f"`{n}`", "chunk", args + (["scratch_ptr"] if b.scratch else []),
                              prologue, b.lines + [grad] * ("term" not in b.stored), [], b.scratch,
                              value_blocks=blocks, tiles=b.tiles,
                              sub_chunked=b.sub_chunked, channel_blocked=b.channel_blocked))
    return out


__all__ = ["Kernel", "KernelIO", "carry_free", "kernels", "offsets", "stored_values"]
