"""One chunk's body in a Triton kernel: the lines of a chunk program's values in schedule order, with the loads
and stores of the tensors a kernel reads and writes (mirasc.triton_kernels assembles the kernels around them).

An MLP memory's hidden axis (4·D) does not fit a register tile: every value with a hidden axis is made in blocks
of BH along it, inside a loop over the blocks (`body`). Consecutive such values share one loop; a sum over the
hidden axis accumulates across the loop's blocks; a value needed by a later loop is written to the program's
scratch memory block by block and read back there. A plain sum of such sums made in one loop (the two paths of a
product rule, the weights and the momentum of a state) accumulates its terms in one tile (`_shared_accumulators`):
each (C, D) accumulator of fp32 holds 16 to 32 registers a thread at C = D = 64 for the whole loop. A loop that
would hold too many of the chunk's tiles through its blocks is split (`_split_loops`), and a tile a loop passes
without reading it waits in scratch memory rather than in registers (`_parked`), as do, between the loops, the
tiles read again furthest away whenever more than PARK_UNITS would be live at once.
A stretch of values made token by token between the loops (a LayerNorm) runs by blocks of BR rows (`_row_runs`).
A narrow output the caller names in `early_stores` is stored on the line after it is made, so that it leaves the
registers there. A linear memory's scores (q·kᵀ, k·kᵀ) are made by blocks of BK head columns ("head-axis blocks").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import ir
from .dotform import is_dot, product_tile_axes
from .emit_triton import (
    OFFS,
    SHAPE,
    SIZE,
    decayed_product,
    dot_expr,
    inlined,
    keeps_channel,
    line,
    name,
    reduces_hidden,
    reduction_lines,
    same_tile,
    stage,
    staged_factors,
    tile_shape,
    wide,
)
from .ir import Graph, Value
from .kernel_plan import peak_units, schedule, summands, tile_units


# ------------------------------------------------------------------------------------------------ memory access
# Token inputs are [rows, T, rest...]: a program reads tokens bos + c*C + offs_t of its row. Every other tensor is
# [count, axes...], indexed by the program (initial and final state, chunk-start states by chunk) or by the row
# (static gates and outer parameters). Offsets use the axes' extents in memory (SIZE); offs_h is the current block's.
def _offsets(axes: tuple[str, ...], token: bool, private: bool = False) -> str:
    terms, stride = [], []
    for a in reversed(axes):
        idx = _private(a) if private else OFFS[a]
        idx = f"(tok + {idx})" if a == "t" and token else idx
        terms.append(" * ".join([_index(idx, a, axes)] + stride))
        if not (a == "t" and token):
            stride = [SIZE[a]] + stride
    return " + ".join(reversed(terms)) if terms else "0"


def _private(axis: str) -> str:
    """The axis's offsets made for one access alone (the module's `private_index`). An MLP memory's kernels take them
    for their token tiles and the carry-free values (`private`): there hidden-block loops lie between the accesses,
    and one offsets tile held across them spilled (the five MLP memories at sm_90a, D = 64: 18,584 B of stack in all
    their kernels, 5,752 B with private offsets). The linear memories' kernels are short and spilled a
    little more with them (Gated DeltaNet 0 → 24 B, TTT-Linear 224 → 368 B), so they share theirs (bench/README.md,
    "Addresses made where they are used")."""
    return f"private_index({OFFS[axis]}, {SHAPE[axis]}, tok, ON_GPU)"


def _own_offsets(load_line: str) -> str:
    """The load with index vectors of its own (`_private`). A kernel without hidden-block loops stores nothing
    between two loads of one tile, so the compiler would take a second load with the same offsets for the first
    and hold the tile in registers all the same (DeltaNet's key-gradient terms of 5 and 7 tile units at sm_80,
    D = 64: 40 and 144 B of stack either way; 0 and 104 B with the second load's offsets its own)."""
    return re.sub(r"\boffs_([a-z])\b", lambda m: _private(m.group(1)), load_line)


def _size(axes, token: bool = False) -> str:
    parts = [SIZE[a] for a in axes if not (token and a == "t")]
    return " * ".join(parts) if parts else "1"


def _index(idx: str, axis: str, axes: tuple[str, ...]) -> str:
    if len(axes) == 1:
        return idx
    return f"{idx}[{', '.join(':' if a == axis else 'None' for a in axes)}]"


def _token_mask(axes: tuple[str, ...]) -> str:
    return _index("(offs_t < nv)", "t", axes)


def load(ptr: str, axes: tuple[str, ...], index: str, token: bool = False, other: float = 0.0,
         private: bool = False) -> str:
    """A tile of the tensor at ptr: the token tile of this chunk (token), else entry `index` of its first axis.
    Token tiles keep their dtype (bf16 q, k, v feed tl.dot as they are; arithmetic promotes them to DTYPE); with
    `private` their offsets are this access's own (`_private`)."""
    if token:
        base = f"{ptr} + (row * T + bos) * {_size(axes, True)}"
        return f"tl.load({base} + {_offsets(axes, True, private)}, mask={_token_mask(axes)}, other={other})"
    return f"tl.load({ptr} + {index} * {_size(axes)} + {_offsets(axes, False, private)}).to(DTYPE)"


def store(ptr: str, axes: tuple[str, ...], index: str, value: str, token: bool = False, mask: str = "",
          private: bool = False) -> str:
    val = f"{value}.to({ptr}.dtype.element_ty)"
    if token:
        base = f"{ptr} + (row * T + bos) * {_size(axes, True)}"
        return f"tl.store({base} + {_offsets(axes, True, private)}, {val}, mask={_token_mask(axes)})"
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
    """A chunk's lines, the axes of each value it keeps in scratch memory, in slot order, the most register tiles its
    schedule keeps live at once (mirasc.kernel_plan.peak_units), whether it takes the sub-chunk BC, which the
    launcher chooses (channel-decay products, a state pass by sub-chunks: mirasc.token_blocks), and the outputs it
    stores itself, by head-axis blocks."""

    lines: list[str]
    scratch: list[tuple[str, ...]]
    tiles: float = 0.0
    sub_chunked: bool = False
    stored: frozenset[str] = frozenset()  # the outputs of `block_stores` the lines store themselves
    channel_blocked: bool = False  # its channel-decay products go by blocks of BK channel columns


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


def _inputs_where_read(segments: list[Value | _Loop], reloadable: frozenset[str] = frozenset()) -> list[Value | _Loop]:
    """The segments with a narrow input's load moved to just before the first segment reading it when a hidden-block
    loop or a channel-decay product lies between. An input first read in a loop was placed before the first loop of
    the run of loops its reader joined, and a split of that run (`_split_loops`) left it there, holding its
    registers through the loops before its reader's. Loads with nothing heavy before their reader stay where the
    schedule put them (moving q past a few straight-line values made a Yaad gradient kernel spill 128 B where it
    spilled none, D = 64, sm_90a), and so does a reloadable tile, which parking loads again before each reader
    (moving those changed which tiles park: Yaad's gradient kernels spilled 2,264 B in all against 1,920). A
    reloadable vector (a per-row parameter) moves: it counts for nothing towards the parked tiles' bound."""
    def movable(seg: Value | _Loop) -> bool:
        return (not isinstance(seg, _Loop) and isinstance(seg.op, ir.Input)
                and (seg.op.name not in reloadable or tile_units(seg) == 0))

    reads = [_segment_reads(seg) for seg in segments]
    first: dict[int, int | None] = {}
    for j, seg in enumerate(segments):
        if movable(seg):
            reader = next((k for k in range(j + 1, len(segments)) if seg.id in reads[k]), None)
            heavy_between = reader is not None and any(_heavy(x) for x in segments[j + 1:reader])
            first[seg.id] = reader if heavy_between else None
    out: list[Value | _Loop] = []
    for j, seg in enumerate(segments):
        out += [v for v in segments[:j] if movable(v) and first[v.id] == j]
        if not (movable(seg) and first[seg.id] is not None):
            out.append(seg)
    return out


def _made_where_read(segments: list[Value | _Loop]) -> list[Value | _Loop]:
    """In a kernel with hidden-block loops, the segments with each made value smaller than a tile (a per-token vector, a
    scalar) moved to just before the first segment reading it when a heavy segment lies between, and with it any tile
    read only by the values so moved (last value first, so that a chain moves whole). `_segments` places a
    straight-line value before the run of wide values its reader joined; once `_split_loops` cuts that run into
    loops, a vector made there (a LayerNorm's row statistics, which sum a tile of their own) was held through every
    loop up to its reader: in TTT-MLP's backward state pass, two such statistics through 13 loops. Inputs are
    `_inputs_where_read`'s."""
    if not any(isinstance(seg, _Loop) for seg in segments):
        return segments
    out, moved = list(segments), set()
    for v in reversed([seg for seg in segments if not isinstance(seg, _Loop)]):
        if isinstance(v.op, (ir.Input, ir.DecayedProduct)) or inlined(v):
            continue
        j = out.index(v)
        readers = [k for k in range(j + 1, len(out)) if v.id in _segment_reads(out[k])]
        chained = bool(readers) and all(not isinstance(out[k], _Loop) and out[k].id in moved for k in readers)
        if readers and (tile_units(v) == 0 or chained) and any(_heavy(x) for x in out[j + 1:readers[0]]):
            out.insert(readers[0] - 1, out.pop(j))
            moved.add(v.id)
    return out


# A hidden-block loop holds, through every block, the tiles it reads from outside (the chunk's (C, D) and (C, C)
# values) and the sums it accumulates. Past LOOP_UNITS of them (tile_units) the loop is split before the value that
# would pass the bound: a block the first part makes and the second reads goes through scratch memory, as between
# any two loops. First 2, from ahead-of-time compiles at D = 64 (bench/README.md, "Parked tiles and split loops"):
# titans' stack bytes in all 13,112 unsplit, 10,824 at 3 units, 10,680 at 2; Moneta's 8,576, 8,392, 8,176. Now 1
# (2026-12-04, sm_90a, D = 64, every kernel of the five MLP memories): 18,584 B in all against 18,248 at 2 and 21,992
# at 3, but 11 matrix products repeated by a second warp group (mirasc.aot.replicated_dots) against 102 and 192, and
# 5 % fewer tensor-core instructions. A product whose result feeds another product in the same loop is laid out
# with all warps on its rows, which repeats a 64-row tile at 8 warps; a block that goes through scratch memory
# between two loops breaks that chain.
LOOP_UNITS = 1.0

# Between the loops, a straight-line value whose making would hold more than PARK_UNITS tiles live parks the live
# tiles it does not read whose next reader is furthest away (`_parked`). 4 from ahead-of-time compiles at D = 64
# (bench/README.md, "Parked tiles between the loops"): titans' stack bytes in all 10,704 with no bound, 10,632 at 8
# units, 10,112 at 6, 5,592 at 4, 5,344 at 3, 5,464 at 2; 3 parks a third more tiles than 4 for 5 % fewer bytes,
# and each parked tile is a store and a load per reader. In kernels without hidden-block loops a bound of 3 only
# added spills (Gated DeltaNet at D = 128: 736 B in all against 416), so they park nothing.
PARK_UNITS = 4.0


def _loop_of(segments: list[Value | _Loop]) -> dict[int, int]:
    return {v.id: j for j, seg in enumerate(segments) if isinstance(seg, _Loop) for v in seg.values}


def _outside_reads(v: Value, part: _Loop) -> dict[int, float]:
    """The register tiles v's lines read that its loop did not make, with their tile_units."""
    if inlined(v) or isinstance(v.op, ir.Input):
        return {}
    made = {u.id for u in part.values}
    return {a.id: tile_units(a) for a in _read(v) if not wide(a) and a.id not in made and tile_units(a) > 0}


def _split_loops(segments: list[Value | _Loop], into: dict[int, Value]) -> list[Value | _Loop]:
    """Each loop cut into consecutive loops that hold at most LOOP_UNITS of outside tiles and sums (where one value
    alone holds more, it gets a loop of its own). The terms of a sum that accumulate in one tile (`into`,
    _shared_accumulators) stay in one loop and count once."""
    out: list[Value | _Loop] = []
    for seg in segments:
        if not isinstance(seg, _Loop):
            out.append(seg)
            continue
        part, outside, sums = _Loop(), {}, 0.0
        unplaced = {}  # shared sum id -> its terms in this loop not placed yet
        for v in seg.values:
            if v.id in into:
                unplaced[into[v.id].id] = unplaced.get(into[v.id].id, 0) + 1
        open_sums: set[int] = set()  # shared sums with terms placed and terms to come: no cut until they close
        for v in seg.values:
            reads = _outside_reads(v, part)
            sibling = v.id in into and into[v.id].id in open_sums  # its sum's tile is counted already
            own = tile_units(v) if v.id in seg.sums and not sibling else 0.0
            extra = sum(u for i, u in reads.items() if i not in outside) + own
            if (part.values and extra > 0 and not open_sums
                    and sum(outside.values()) + sums + extra > LOOP_UNITS):
                out.append(part)
                part, outside, sums = _Loop(), {}, 0.0
                reads = _outside_reads(v, part)
            part.values.append(v)
            outside.update(reads)
            if v.id in seg.sums:
                part.sums.add(v.id)
                sums += own
            if v.id in into:
                unplaced[into[v.id].id] -= 1
                open_sums = {i for i in open_sums | {into[v.id].id} if unplaced[i] > 0}
        out.append(part)
    return out


def body(graph: Graph, loads: dict[str, str] | None = None,
         wide_sources: dict[str, tuple[str, str]] | None = None,
         wide_outputs: dict[str, list[tuple[str, str, str]]] | None = None,
         reloadable: frozenset[str] = frozenset(), early_stores: dict[str, str] | None = None,
         block_stores: dict[str, str] | None = None, held: frozenset[str] = frozenset(),
         channel_blocks: bool = False) -> Body:
    """The lines computing the graph's outputs.

    loads: the load of each narrow input, emitted just before its first use. wide_sources: where each wide input's
    blocks are read (pointer, index). wide_outputs: for an output that is wide, where its blocks go
    ([(pointer, index, mask)]); a narrow output is the caller's to use. reloadable: narrow inputs that are parked
    as made values are (below), by loading them again instead of storing them: values an earlier kernel made and
    stored for this chunk, which would otherwise hold their registers from their first reader to their last.
    early_stores: the store of a narrow output, emitted where the output is made rather than by the caller after
    the last line, so that its tile can leave the registers there (or be parked, if read again). block_stores: the
    store of a narrow output that the lines may make themselves, a block of head columns at a time (named in the
    result's `stored`; "head-axis blocks"). held: narrow inputs that a kernel walking the chunks may load once,
    before its chunk loop, instead (the constexpr PARAMS_ONCE, which the caller's prologue reads): their loads here,
    the first and any again, are written under `if not PARAMS_ONCE:`. channel_blocks: make the channel-decay products
    by blocks of BK channel columns (emit_triton.decayed_product), in a kernel whose value axis is whole (BV = D)."""
    loads, wide_sources, wide_outputs = loads or {}, wide_sources or {}, wide_outputs or {}
    early_stores = early_stores or {}
    order = schedule(graph)
    segments = _segments(order)
    segments = _split_loops(segments, _shared_accumulators(graph, _loop_of(segments)))
    segments = _inputs_where_read(_made_where_read(segments), reloadable)
    loop_of = _loop_of(segments)
    out_of = {v.id: n for n, v in graph.outputs.items()}
    into = _shared_accumulators(graph, loop_of)  # row runs join no loop, so they change none of these
    segments = _row_runs(segments, loads, set(out_of) | {u.id for u in into.values()})
    loop_of = _loop_of(segments)
    row_ends = {j: _row_ends(segments, j) for j, seg in enumerate(segments) if isinstance(seg, _Rows)}
    read_elsewhere = {a.id for j, seg in enumerate(segments) if isinstance(seg, _Loop) for u in seg.values
                      if not inlined(u) for a in _read(u) if loop_of.get(a.id, j) != j}
    accumulated = {u.id for u in into.values()}
    kept = [v for seg in segments if isinstance(seg, _Loop) for v in seg.values
            if v.id in read_elsewhere and not isinstance(v.op, ir.Input)]
    factors = [z for v in order if isinstance(v.op, ir.DecayedProduct) for z in staged_factors(v, channel_blocks)]
    # by channel blocks, a product's result with the channel axis is stored a block at a time to a slot of its own
    block_results = [v for v in order if channel_blocks and isinstance(v.op, ir.DecayedProduct) and keeps_channel(v)]
    reload = {v.id: f"{v.op.name} = {loads[v.op.name]}" for v in order
              if isinstance(v.op, ir.Input) and v.op.name in reloadable and v.op.name in loads}
    running = _running_sums(segments, graph, set(out_of) | accumulated)
    held_out = {i for i, n in out_of.items() if n not in early_stores}  # the caller stores these after the lines
    evicted = _parked(segments, held_out | accumulated | set(running), set(reload))
    blocked = _head_blocked(graph, segments, order, loads, {v.id: n for n, v in graph.outputs.items()
                                                           if n in (block_stores or {})})
    straight = not any(isinstance(seg, _Loop) for seg in segments)  # with loops, `_parked` reloads `reload` itself
    rereadable = [v for v in order if isinstance(v.op, ir.Input) and (straight or v.id not in reload)
                  and v.id not in blocked.skipped and tile_units(v) > 0 and not wide(v)
                  and loads.get(v.op.name, "").startswith("tl.load(")]
    own = _own_offsets if straight else (lambda load_line: load_line)  # the loops' token loads have their own
    inputs = {v.id for v in rereadable}
    # in a kernel without loops, a relabelling of such an input (v24 = k) is the same tile, loaded again as well
    tiles = order if straight else rereadable
    reread = _reread(segments, {u.id: f"{name(u)} = {own(loads[same_tile(u).op.name])}" for u in tiles
                                if same_tile(u).id in inputs and not inlined(u)}, after_products=straight,
                     unread=blocked.by_blocks)
    for i, (where, again) in reread.items():
        evicted[i], reload[i] = where, again
    for j, (entries, exits) in row_ends.items():  # a row run reads its entries by rows from their park slots
        for e in entries:
            if not isinstance(e.op, ir.Input):
                evicted.setdefault(e.id, set()).add(j)
        for x in exits:  # and they are read after it from there, or loaded again
            evicted.setdefault(x.id, set()).add(j + 1)
            if isinstance(x.op, ir.Input):
                reload[x.id] = f"{x.op.name} = {loads[x.op.name]}"
                reread.pop(x.id, None)
    # the factors of channel-decay products that are read a slice at a time (emit_triton.decayed_product), each
    # tile once (a relabelled factor, such as the log-decays as (s, c), reads the slot of the tile it relabels); a
    # factor parked where it is made is read from its park slot, not stored a second time
    factor_tiles = list({same_tile(z).id: same_tile(z) for z in factors}.values())
    in_park = _factors_read_from_park(factor_tiles, evicted, reload)
    kept += [z for z in factor_tiles if z.id not in in_park]
    kept += [v for v in block_results if v.id not in {z.id for z in kept}]
    slot = {v.id: " + ".join(["scratch"] + [_slot_offset(kept, k)] * (k > 0)) for k, v in enumerate(kept)}
    by_id = {v.id: v for v in order}
    park_slot = {}  # a slot of its own, even for a tile kept above (that slot may be written after it is read)
    relabelled: set[int] = set()
    for v in (v for seg in segments for v in _values(seg) if v.id in evicted and v.id not in reload):
        base = same_tile(v)  # a relabelled parked tile with the same register extents reads that tile's slot
        if base.id in park_slot and tile_shape(base.axes) == tile_shape(v.axes):
            park_slot[v.id] = park_slot[base.id]
            relabelled.add(v.id)
            continue
        park_slot[v.id] = "scratch + " + _slot_offset(kept, len(kept))
        kept.append(v)
    slot.update({i: park_slot[i] for i in in_park})
    slot.update({z.id: slot[same_tile(z).id] for z in factors})
    staged: set[int] = set(in_park)  # their park stores stage them

    def fetch(v: Value, here: int) -> list[str]:
        """Lines making a wide value read in loop `here` available: its block from memory if made elsewhere."""
        if isinstance(v.op, ir.Input):
            ptr, index = wide_sources[v.op.name]
            return [f"{name(v)} = {load(ptr, v.axes, index)}"]
        if loop_of.get(v.id) != here:
            return [f"{name(v)} = tl.load({slot[v.id]} + {_offsets(v.axes, False)})"]
        return []

    lines: list[str] = []
    if kept:  # the program's slot holds the blocks of these values one after another
        lines.append(f"scratch = scratch_ptr + slot * ({_slot_offset(kept, len(kept))})  # "
                     f"{', '.join(v.hint or 'a mask' if inlined(v) else name(v) for v in kept)}")
    held_ids = {v.id for v in order if isinstance(v.op, ir.Input) and v.op.name in held}
    parking = _Parking(evicted, by_id, park_slot, reload, set(reread), held_ids, relabelled)
    running_totals = {u.id for u in running.values()}
    started: set[int] = set()  # running sums with a term in their tile
    for j, seg in enumerate(segments):
        reads = _segment_reads(seg)
        if isinstance(seg, _Rows):
            _emit_rows(seg, *row_ends[j], j, reads, parking, park_slot, loads, held_ids, lines)
            continue
        if channel_blocks and isinstance(seg, Value) and isinstance(seg.op, ir.DecayedProduct):
            # by channel blocks the product reads its staged factors from their slots only: one staged already (by
            # an earlier product, or parked where made) need not come back to the registers and stay there through
            # the product until its next reader
            reads -= {z.id for z in staged_factors(seg, True) if same_tile(z).id in staged}
        parking.read_back(j, reads, lines)
        if not isinstance(seg, _Loop):
            if seg.id in blocked.skipped:  # read only by products made by head-axis blocks, or stored by them
                pass
            elif seg.id in blocked.stores:
                lines += _with_hint(seg, _head_blocked_output(seg, loads, (block_stores or {})[blocked.stores[seg.id]],
                                                              graph.outputs[blocked.stores[seg.id]]))
            elif isinstance(seg.op, ir.Input):
                if seg.op.name in loads:
                    _input_load(lines, f"{seg.op.name} = {loads[seg.op.name]}", seg.id in held_ids)
            elif seg.id in blocked.dots:
                lines += _with_hint(seg, _head_blocked_dot(seg, loads, blocked.chains[seg.id]))
            elif isinstance(seg.op, ir.DecayedProduct):
                lines += _decayed_product_lines(seg, slot, staged, channel_blocks)
            elif seg.id in running_totals:  # its running terms are in its tile already: the others join
                rest = [t for t in summands(seg) if t.id not in running]
                lines += _with_hint(seg, [f"{name(seg)} = {' + '.join(name(x) for x in [seg, *rest])}"] if rest else [])
            elif seg.id not in accumulated:  # a shared accumulator is made in its terms' loop
                lines += _with_hint(seg, line(seg))
            if seg.id in running:
                total = running[seg.id]
                lines.append(f"{name(total)} = {name(total)} + {name(seg)}" if total.id in started
                             else f"{name(total)} = {name(seg)}  # a running sum")
                started.add(total.id)
            lines += [early_stores[out_of[seg.id]]] if out_of.get(seg.id) in early_stores else []
            parking.made([seg], lines)
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
                pre, acc, post = reduction_lines(v, into=into.get(v.id))
                before += [x for x in pre if x not in before]  # a shared accumulator is zeroed once
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
        lines += [early_stores[out_of[v.id]] for v in seg.values if out_of.get(v.id) in early_stores]
        parking.made(seg.values, lines)
    sub_chunked = any(isinstance(v.op, ir.DecayedProduct) for v in order)
    return Body(lines, [v.axes for v in kept], peak_units(graph, order), sub_chunked,
                frozenset(blocked.stores.values()), channel_blocks and sub_chunked)


# ------------------------------------------------------------------------------------------------ row blocks
# Between an MLP memory's hidden-block loops, its LayerNorm (forward, and most of all backward) is a stretch of
# values made token by token: elementwise, or summed over the value axis, never across tokens. Whole, each is a (C, D)
# tile, 32 registers a thread at D = 128 and 8 warps, and the backward's stretch holds several at once: TTT-MLP's
# backward state pass spilled 1,872 B a thread at sm_90a, D = 128 (C = 64, bf16, its default config), nearly all of
# it on the LayerNorm's lines. Made BR rows at a time, with the tiles it reads from earlier values read from their
# park slots by rows, and those read after it parked by rows, it spills 584 B by blocks of 16 (bench/README.md, "Row
# blocks"). BR is the launcher's (mirasc.backends.triton.row_block); the spill guard also tries the whole chunk as one
# block, which some kernels at D = 64 take.
ROW_RUN_UNITS = 2.0  # the least tile units (kernel_plan.tile_units) of made values for a stretch to run by row blocks
ROW_OFFS = "offs_rb"  # the token offsets of the current row block
ROW_LOOP = "for rb in range(0, C, BR):"


@dataclass
class _Rows:
    """Consecutive straight-line values made token by token along one token axis (`axis`), run by blocks of BR rows
    (`_row_block_lines`)."""

    values: list[Value] = field(default_factory=list)
    axis: str = "t"


def _token_axes(v: Value) -> set[str]:
    return set(v.axes) & set(ir.TOKEN_AXES)


def _row_axis(v: Value, loads: dict[str, str], fixed: set[int]) -> str | None:
    """The token axis v is made along token by token, "" for a per-row parameter (an input without a token axis,
    loaded before the row blocks), None if neither. `fixed`: made values that cannot leave the registers (outputs,
    shared accumulators), which a row block could not read by rows."""
    toks = _token_axes(v)
    if isinstance(v.op, ir.Input):
        if v.op.name not in loads or len(toks) > 1:
            return None
        if not toks:
            return ""
        (axis,) = toks
        return axis if OFFS[axis] in loads[v.op.name] else None
    if (len(toks) != 1 or v.id in fixed or inlined(v) or not isinstance(v.op, (ir.Elementwise, ir.Einsum, ir.Rename))
            or is_dot(v)):
        return None
    (axis,) = toks
    if any(not _token_axes(a) <= toks for a in v.args):
        return None  # a product over the tokens, or a relabelling of the token axis
    if any(a.id in fixed and _token_axes(a) for a in _read(v)):
        return None
    return axis


def _row_runs(segments: list[Value | _Loop], loads: dict[str, str], fixed: set[int]) -> list[Value | _Loop | _Rows]:
    """The segments with each stretch of row values (`_row_axis`) that makes at least ROW_RUN_UNITS of tiles joined
    into one _Rows; only in kernels with hidden-block loops (the linear memories' kernels have their own head-axis
    blocks)."""
    if not any(isinstance(seg, _Loop) for seg in segments):
        return list(segments)
    out: list[Value | _Loop | _Rows] = []
    run: list[Value] = []
    axis = ""

    def close() -> None:
        if sum(tile_units(v) for v in run if not isinstance(v.op, ir.Input)) >= ROW_RUN_UNITS:
            out.append(_Rows(list(run), axis))
        else:
            out.extend(run)
        run.clear()

    for seg in segments:
        a = None if isinstance(seg, _Loop) else _row_axis(seg, loads, fixed)
        if a is None or (a and axis and a != axis):
            close()
            axis = ""
            if a is None:
                out.append(seg)
                continue
        run.append(seg)
        axis = axis or a
    close()
    return out


def _row_ends(segments: list, j: int) -> tuple[list[Value], list[Value]]:
    """A row run's entries (token tiles made or loaded before it that its values read) and exits (its values with a
    token axis read after it)."""
    run = segments[j]
    made = {v.id for v in run.values}
    entries = {a.id: a for v in run.values if not isinstance(v.op, ir.Input) for a in _read(v)
               if a.id not in made and _token_axes(a)}
    later = set().union(*[_segment_reads(seg) for seg in segments[j + 1:]])
    exits = [v for v in run.values if v.id in later and _token_axes(v)]
    return sorted(entries.values(), key=lambda v: v.id), exits


def _emit_rows(run: _Rows, entries: list[Value], exits: list[Value], j: int, reads: set[int], parking: _Parking,
               slot: dict[int, str], loads: dict[str, str], held: set[int], lines: list[str]) -> None:
    """A row run's lines (segment j): the tiles it reads whole read back, its per-row parameters loaded, then the
    loop over its row blocks; its exits leave the registers with it (read back from their slots, or loaded again,
    where next read)."""
    parking.read_back(j, reads - {e.id for e in entries}, lines)
    for v in run.values:
        if isinstance(v.op, ir.Input) and not _token_axes(v) and v.id not in parking.held:
            _input_load(lines, f"{v.op.name} = {loads[v.op.name]}", v.id in held)
            parking.made([v], lines)
    if any(not isinstance(e.op, ir.Input) for e in entries):
        lines.append("tl.debug_barrier()  # parked tiles other threads stored")
    lines += _row_block_lines(run, entries, exits, slot, loads)
    parking.made_ids |= {x.id for x in exits}
    if any(not isinstance(x.op, ir.Input) for x in exits):
        parking.stored_at = len(lines)


def _row_block_lines(run: _Rows, entries: list[Value], exits: list[Value], slot: dict[int, str],
                     loads: dict[str, str]) -> list[str]:
    """The run's lines inside a loop over blocks of BR rows: its entries read by rows (made ones from their park
    slots, inputs from memory), its values made, its made exits stored to their park slots by rows. Every name with
    a token axis gets the suffix `_rows` inside the loop (a loop may not change a variable's shape)."""
    stored = {v.id for v in exits if not isinstance(v.op, ir.Input)}
    inner = []
    for e in entries:
        inner.append(f"{e.op.name} = {loads[e.op.name]}" if isinstance(e.op, ir.Input)
                     else f"{name(e)} = tl.load({slot[e.id]} + {_offsets(e.axes, False)})")
    for v in run.values:
        if isinstance(v.op, ir.Input):
            inner += [f"{v.op.name} = {loads[v.op.name]}"] if _token_axes(v) else []
            continue
        inner += _with_hint(v, line(v))
        if v.id in stored:
            inner.append(f"tl.store({slot[v.id]} + {_offsets(v.axes, False)}, {name(v)})  # park")
    renamed = [name(v) for v in [*entries, *run.values] if _token_axes(v) and not inlined(v)]
    # with the helpers a value's lines make (v64_c0, a common subexpression of v64)
    rename = re.compile(r"\b(" + "|".join(map(re.escape, renamed)) + r")(_c\d+)?\b") if renamed else None
    own = OFFS[run.axis]

    def by_rows(text: str) -> str:
        code, sep, comment = text.partition("  # ")
        code = code.replace(f"private_index({own}, {SHAPE[run.axis]},", f"private_index({ROW_OFFS}, BR,")
        code = re.sub(rf"\b{own}\b", ROW_OFFS, code)
        return (rename.sub(r"\1_rows\2", code) if rename else code) + sep + comment

    return ([f"{ROW_LOOP}  # the tokens by blocks of BR rows: values made token by token",
             f"    {ROW_OFFS} = rb + tl.arange(0, BR)"] + ["    " + by_rows(x) for x in inner])


# ------------------------------------------------------------------------------------------------ head-axis blocks
# A matrix product over the head axis whose operands are each a tile read from memory with that axis (a token tile,
# the state's rows) or made from one elementwise with values without it (k scaled per token, -ΔW) is made in blocks of
# BK along that axis: each block's inputs loaded inside the loop, the values between remade from them, the products
# summed in an fp32 tile, as flash-linear-attention's chunk_o makes q·kᵀ and q·h by blocks of K. Whole, the right
# operand at D = 128 is a (128, C) tile, and on an A100 (mma.sync, its operands in registers) every warp holds all of
# it: Mamba2's and RetNet's gate-gradient terms spilled 176 and 192 B a thread there (sm_80, C = 64, bf16), none by
# blocks of 64 or 32 (BK: mirasc.backends.triton.head_block); Gated DeltaNet's third decay-gradient term, with two
# products of the scaled key tile and the state's rows, 24 B with the spill guard's best config, none by blocks.
# TTT-Linear's kernels too, though they hold whole value rows (its LayerNorm): with the spill guard, 744 -> 488 B in all
# at sm_80, D = 64, 5,984 -> 5,056 at D = 128, 4,736 -> 3,456 at sm_90a, D = 128, and 32 -> 32 at D = 64 (when only
# the scores were made by blocks, with fewer guard candidates, blocks had cost them: bench/README.md, "The scores by
# head-axis blocks"). Only in kernels without hidden-block loops (an MLP memory's operands are read in several loops).
# A gradient term that ends in a product keeping the head axis of a token tile ((C, C)·(C, D), a key-gradient term) is
# made and stored a block at a time too, its caller's store taken over (`block_stores`): whole, its (64, 128) fp32
# result took 32 registers a thread more, and DeltaNet's and Gated DeltaNet's key-gradient terms at sm_80, D = 128
# spilled 24 to 48 B with their default configs, TTT-Linear's query-gradient term at sm_80, D = 64 16 B; none by
# blocks. With both, every kernel of linear attention, RetNet, Mamba2, DeltaNet and Gated DeltaNet compiles without
# spills at sm_80 and sm_90a, D = 64 and 128, with the spill guard's configs (bench/README.md, "Products and outputs by
# head-axis blocks"; some defaults spill where they did not, up to 48 B, and the guard replaces them).
HEAD_AXIS = "i"
_TOKEN_AXIS = "t"  # a token tile's chunk axis (its relabellings may call it s or u)


@dataclass
class _HeadBlocked:
    dots: set[int] = field(default_factory=set)  # products made by head-axis blocks
    skipped: set[int] = field(default_factory=set)  # their operands' whole tiles, which nothing else reads
    stores: dict[int, str] = field(default_factory=dict)  # products stored by blocks as they are made: the output
    by_blocks: dict[int, set[int]] = field(default_factory=dict)  # {product: the tiles it reads by blocks}
    chains: dict[int, list[Value]] = field(default_factory=dict)  # {product: its operands' values remade by blocks}


def _loaded_input(v: Value, loads: dict[str, str]) -> Value | None:
    """The input whose tile v is, where that input is read from memory with the head axis and v is it or a
    relabelling of it that keeps the axes in place; else None."""
    while isinstance(v.op, ir.Rename):
        arg, mapping = v.args[0], dict(v.op.mapping)
        if [mapping.get(x, x) for x in arg.axes] != list(v.axes):
            return None
        v = arg
    if isinstance(v.op, ir.Input) and HEAD_AXIS in v.axes and v.op.name in loads:
        return v
    return None


def _head_blocked(graph: Graph, segments: list[Value | _Loop], order: list[Value], loads: dict[str, str],
                  stored: dict[int, str]) -> _HeadBlocked:
    """The products a kernel makes by head-axis blocks, and the whole tiles it then loads for nothing. `stored`:
    {output value id: name} of the outputs the kernel may store by blocks."""
    out = _HeadBlocked()
    if any(isinstance(seg, _Loop) for seg in segments):
        return out
    readers: dict[int, list[int]] = {}
    for v in order:
        for a in _read(v):
            readers.setdefault(a.id, []).append(v.id)
    outputs = {v.id for v in graph.outputs.values()}
    for v in order:
        chain = _blocked_contraction(v, loads, readers, outputs)
        if chain is not None:
            out.dots.add(v.id)
            out.by_blocks[v.id] = {x.id for x in chain}
            out.chains[v.id] = chain
            out.skipped |= {x.id for x in chain if _loaded_input(x, loads) is None}  # remade by blocks
    for n in stored.values():
        product, chain = _product_of(graph.outputs[n], readers)
        if (product is not None and not readers.get(graph.outputs[n].id)
                and _keeps_head_axis_of_loaded_tokens(product, loads)):
            out.stores[product.id] = n
            out.skipped |= chain
            out.by_blocks[product.id] = {x.id for x in product.args if _loaded_input(x, loads)}
    for v in reversed(order):  # a relabelling before the input it relabels
        if (isinstance(v.op, (ir.Input, ir.Rename)) and v.id not in outputs and readers.get(v.id)
                and all(v.id in out.by_blocks.get(r, ()) or r in out.skipped for r in readers[v.id])):
            out.skipped.add(v.id)
    return out


def _product_of(output: Value, readers: dict[int, list[int]]) -> tuple[Value | None, set[int]]:
    """The matrix product whose tile a narrow output is (itself, or through relabellings that keep the axes in place,
    each read by the next alone), and the ids of those relabellings; (None, ...) if there is none."""
    chain, v = set(), output
    while isinstance(v.op, ir.Rename):
        arg, mapping = v.args[0], dict(v.op.mapping)
        if [mapping.get(x, x) for x in arg.axes] != list(v.axes) or len(readers.get(arg.id, [])) != 1:
            return None, chain
        chain.add(v.id)
        v = arg
    return (v, chain) if isinstance(v.op, ir.Einsum) and is_dot(v) and not wide(v) else (None, chain)


def _keeps_head_axis_of_loaded_tokens(v: Value, loads: dict[str, str]) -> bool:
    """Whether v is a matrix product of a token tile read from memory (q, k, ...) whose head axis it keeps, the
    other operand without that axis: a (C, D) output such as a key-gradient term (C, C)·(C, D)."""
    token = [(t := _loaded_input(x, loads)) is not None and _TOKEN_AXIS in t.axes for x in v.args]
    return HEAD_AXIS in v.axes and sum(token) == 1 and all(HEAD_AXIS not in x.axes
                                                           for x, is_token in zip(v.args, token) if not is_token)


def _blocked_contraction(v: Value, loads: dict[str, str], readers: dict[int, list[int]],
                         outputs: set[int]) -> list[Value] | None:
    """For a matrix product over the head axis whose operands are, each, a tile read from memory with that axis (a
    token tile, the state's rows) or made from one elementwise with values without that axis (k scaled per token):
    the values its blocks are made from (the inputs, then what is made of them, in order); else None. A value made
    on the way must be read by the next alone."""
    if not (isinstance(v.op, ir.Einsum) and is_dot(v) and not wide(v)):
        return None
    a, b = v.args
    if set(a.axes) & set(b.axes) != {HEAD_AXIS}:
        return None
    chain: list[Value] = []
    if not all(_remade_by_blocks(x, loads, readers, outputs, chain) for x in (a, b)):
        return None
    return list({x.id: x for x in chain}.values())


def _remade_by_blocks(x: Value, loads: dict[str, str], readers: dict[int, list[int]], outputs: set[int],
                      chain: list[Value]) -> bool:
    """Whether x can be made a block of head columns at a time from the inputs it is made of (`_blocked_contraction`);
    appends those inputs and values to `chain`, each after what it reads. An input's relabelling that keeps its axes
    in place stands for the input."""
    loaded = _loaded_input(x, loads)
    if loaded is not None:
        chain += [loaded] + [x] * (x is not loaded)
        return loads[loaded.op.name].startswith("tl.load(")  # not a carry the kernel holds
    if x.id in outputs or len(readers.get(x.id, [])) != 1 or not (
            isinstance(x.op, (ir.Elementwise, ir.Rename))
            or (isinstance(x.op, ir.Einsum) and not is_dot(x) and set(x.axes) == set(product_tile_axes(x)))):
        return False
    with_axis = [y for y in x.args if HEAD_AXIS in y.axes]
    if len(with_axis) != 1 or not _remade_by_blocks(with_axis[0], loads, readers, outputs, chain):
        return False
    chain.append(x)
    return True


def _head_blocked_dot(v: Value, loads: dict[str, str], chain: list[Value]) -> list[str]:
    """The lines of a product over the head axis by blocks of BK: each input's block loaded (offs_k in place of
    offs_i), the values between remade from the blocks, the blocks' products summed."""
    inputs = [x for x in chain if isinstance(x.op, ir.Input)]
    # an input, or a relabelling of it that keeps its axes in place, is read as the input's block
    block_of = {name(x): f"{_loaded_input(x, loads).op.name}_block" for x in chain if _loaded_input(x, loads)}

    def by_blocks(text: str) -> str:
        return re.sub(r"\b(" + "|".join(map(re.escape, block_of)) + r")\b", lambda m: block_of[m.group(1)], text)

    remade = [f"    {by_blocks(x)}" for u in chain if name(u) not in block_of for x in line(u)]
    a, b = v.args
    product = by_blocks(dot_expr(name(a), a.axes, name(b), b.axes, v.axes))
    return [f"{name(v)} = tl.zeros({tile_shape(v.axes)}, DTYPE)", *_block_loop([x.op.name for x in inputs], loads),
            *remade, f"    {name(v)} += {product}"]


def _head_blocked_output(v: Value, loads: dict[str, str], store_line: str, output: Value) -> list[str]:
    """The lines of a product that keeps the head axis of a token tile (`_keeps_head_axis_of_loaded_tokens`), made
    and stored (`store_line`, the store of `output`, v's tile) a block of BK head columns at a time: a whole (C, D)
    fp32 result at D = 128 took 32 registers a thread more than its blocks."""
    tile = next(x for x in v.args if _loaded_input(x, loads) is not None and HEAD_AXIS in x.axes)
    token = _loaded_input(tile, loads).op.name
    block = f"{token}_block"
    (lhs, lhs_axes), (rhs, rhs_axes) = [(block if x is tile else name(x), x.axes) for x in v.args]
    product = dot_expr(lhs, lhs_axes, rhs, rhs_axes, v.axes)
    store_block = _head_block(store_line).replace(f"{name(output)}.to(", f"{name(v)}.to(")
    return [*_block_loop([token], loads), f"    {name(v)} = {product}", f"    {store_block}"]


def _block_loop(inputs: list[str], loads: dict[str, str]) -> list[str]:
    """The head of a loop over the head axis's blocks of BK columns, loading each named input's block (`NAME_block`)."""
    return ["for kb in range(0, D, BK):  # the head axis, a block at a time", "    offs_k = kb + tl.arange(0, BK)",
            *[f"    {n}_block = {_head_block(loads[n])}" for n in inputs]]


def _head_block(load_line: str) -> str:
    """A load of one block of BK head-axis columns (offs_k) in place of the whole axis."""
    return load_line.replace("private_index(offs_i, D,", "private_index(offs_k, BK,").replace("offs_i", "offs_k")


# ------------------------------------------------------------------------------------------------ parked tiles
# A register tile made before a loop over the hidden blocks (or a channel-decay product, which loops over its
# sub-chunks) and read only after it would hold its registers through the loop, where the loop's own tiles need
# them: in an MLP memory's backward state pass, a dozen (C, D) tiles at once, and the compiler spills. Such a tile
# is parked: stored to the program's scratch memory where it is made and read back before the next segment that
# reads it. A tile read in a loop is read back before the loop and stays in registers through it. Inputs stay in
# registers (in their own dtype: a bf16 tile takes half a fp32 one's registers): loading q, k, v and the gates again
# from their tensors instead made Moneta's backward state pass spill 1,624 B where it spills 1,248 (D = 64, sm_90a),
# and titans' kernels 6,344 B in all against 5,344 when read again only under the straight-line bound below
# (again 2026-12-04, with outputs stored where made and inputs loaded after the loops: titans 3,016 B in all against
# 1,880, TTT-MLP 1,176 against 648, Yaad 3,144 against 2,656).
# The exception is an input the caller names `reloadable`: the carry-free (C, D) values a gradient kernel reads from
# the local_bwd kernel's buffers, which stand for values the kernel would otherwise make and park. They are parked
# with no store and loaded again before their next reader (titans' gradient kernels, D = 64, sm_90a: 14 of 29
# kernels spill, 2,576 B in all, against 21 and 3,384 B holding them).
# Straight-line code between the loops is held to PARK_UNITS live tiles the same way: the tiles a value does not
# read leave the registers, the one whose next reader is furthest away first, until the value fits.
# Inputs read from memory can also leave the registers before each heavy segment that does not read them and be
# loaded again before their next reader, under the constexpr REREAD_INPUTS (`_reread`), the other tiles parked as
# above either way. Neither form spills less in every kernel (sm_90a, D = 64, every kernel with its default config:
# titans 808 B in all held, 592 read again; Moneta 1,568 and 1,120; Yaad 248 and 424; TTT-MLP 176 and 320; Memora
# 2,472 and 2,528, 8 of its kernels spilling less one way and 8 the other), so it is a spill guard candidate.
# A kernel without hidden-block loops (a linear memory's) has no parking of its own; there the same candidate loads
# an input again after the matrix products that do not read it, with offsets of its own (`_own_offsets`).


def _heavy(seg: Value | _Loop) -> bool:
    """Whether a segment holds many tiles of its own while it runs: a hidden-block loop, a channel-decay product."""
    return isinstance(seg, _Loop) or (isinstance(seg, Value) and isinstance(seg.op, ir.DecayedProduct))


def _values(seg) -> list[Value]:
    """The values a segment makes (or loads): a loop's or a row run's, or the value itself."""
    return seg.values if isinstance(seg, (_Loop, _Rows)) else [seg]


def _segment_reads(seg) -> set[int]:
    """The ids of the values a segment's lines read by name."""
    return {a.id for u in _values(seg) if not inlined(u) for a in _read(u)}


def _parked(segments: list[Value | _Loop], excluded: set[int], reloadable: set[int]) -> dict[int, set[int]]:
    """{tile id: the segments before which it leaves the registers} for the register tiles parked in a kernel with
    hidden-block loops (excluded: outputs and shared accumulators, which the caller and their loops hold). A tile
    leaves them before each heavy segment that does not read it, between its making and its last read, and before a
    straight-line value whose making would otherwise hold more than PARK_UNITS tiles live (the tiles whose next
    reader is furthest away leave first, as in Belady's rule). A vector along the chunk's tokens (`_per_token_vector`)
    leaves as a tile does, but counts for nothing towards PARK_UNITS: it leaves there only with the tiles read again
    before it. Kept in registers, such vectors are replicated across the warps sharing their rows. A reloadable
    vector (a per-row parameter) leaves the same way, loaded again rather than stored."""
    if not any(isinstance(seg, _Loop) for seg in segments):
        return {}
    reads = [_segment_reads(seg) for seg in segments]
    last: dict[int, int] = {}
    for j, r in enumerate(reads):
        for i in r:
            last[i] = j
    units: dict[int, float] = {}
    parkable: set[int] = set()
    for seg in segments:
        for v in _values(seg):
            if not (wide(v) or inlined(v)) and (tile_units(v) > 0 or _per_token_vector(v) or v.id in reloadable):
                units[v.id] = tile_units(v)  # 0 for a vector: it leaves the registers but adds nothing to `live`
                if v.id not in excluded and (v.id in reloadable or not isinstance(v.op, ir.Input)):
                    parkable.add(v.id)
    evicted: dict[int, set[int]] = {}
    held: dict[int, float] = {}  # tiles in registers before segment j: made or read back, not dead, not evicted
    for j, seg in enumerate(segments):
        held = {i: u for i, u in held.items() if last.get(i, -1) >= j}
        held.update({i: units[i] for i in reads[j] if i in units})
        movable = [i for i in held if i in parkable and i not in reads[j] and last[i] > j]
        if _heavy(seg):
            out = movable
        else:
            nxt = {i: min(k for k in range(j + 1, last[i] + 1) if i in reads[k]) for i in movable}
            out, live = [], sum(held.values()) + (tile_units(seg) if isinstance(seg, Value) else 0.0)
            for i in sorted(movable, key=lambda i: -nxt[i]):
                if live <= PARK_UNITS:
                    break
                out.append(i)
                live -= held[i]
        for i in out:
            evicted.setdefault(i, set()).add(j)
            del held[i]
        for v in _values(seg):  # a row run's values leave the registers with their row blocks
            if v.id in units and (isinstance(seg, Value) or (isinstance(seg, _Loop) and v.id in seg.sums)):
                held[v.id] = units[v.id]
    return evicted


def _per_token_vector(v: Value) -> bool:
    """A vector along the chunk's tokens (a gate's cumulative decay, a row statistic), which `_parked` parks as it
    parks tiles."""
    return len(v.axes) == 1 and v.axes[0] in ir.TOKEN_AXES and not isinstance(v.op, (ir.Const, ir.Size, ir.Mask))


def _reread(segments: list[Value | _Loop], loads: dict[int, str], after_products: bool = False,
            unread: dict[int, set[int]] | None = None) -> dict[int, tuple[set[int], str]]:
    """{tile id: (the heavy segments before which it leaves the registers, its load)} for the tiles read from
    memory (`loads`, by id: inputs, and in a kernel without loops their relabellings) that a hidden-block loop or a
    channel-decay product not reading them lies between their load and their last reader (REREAD_INPUTS, above),
    or with `after_products` a matrix product. The other parked tiles are chosen without them (`_parked`).
    `unread`: {value id: the tiles it reads by blocks of its own}, reads that do not count."""
    heavy = (lambda seg: _heavy(seg) or is_dot(seg)) if after_products else _heavy
    unread = unread or {}
    reads = [_segment_reads(seg) - unread.get(seg.id, set()) if isinstance(seg, Value) else _segment_reads(seg)
             for seg in segments]
    out = {}
    for j, seg in enumerate(segments):
        if not isinstance(seg, Value) or seg.id not in loads:
            continue
        readers = [k for k in range(j + 1, len(segments)) if seg.id in reads[k]]
        where = {k for k in range(j + 1, max(readers, default=j)) if heavy(segments[k]) and seg.id not in reads[k]}
        if where:
            out[seg.id] = (where, loads[seg.id])
    return out


class _Parking:
    """Emits the stores and read-backs of the parked tiles, segment by segment."""

    def __init__(self, evicted: dict[int, set[int]], values: dict[int, Value], slot: dict[int, str],
                 reload: dict[int, str], reread: set[int], held: set[int], relabelled: set[int]):
        self.parked = {i: values[i] for i in evicted}
        self.relabelled = relabelled  # read back from the slot of the tile they relabel, which that tile's store fills
        self.reload = reload  # the load of a reloadable input, emitted again in place of a read-back
        self.reread = reread  # inputs loaded again only where REREAD_INPUTS is set (else held)
        self.held_inputs = held  # inputs loaded (here, and again) only where PARAMS_ONCE is not set
        self.evicted_before: dict[int, set[int]] = {}
        for i, where in evicted.items():
            for j in where:
                self.evicted_before.setdefault(j, set()).add(i)
        self.slot = slot
        self.held: set[int] = set()  # made, or read back, and not evicted since
        self.made_ids: set[int] = set()
        self.stored_at = -1  # the line after the last store of a parked tile
        self.barrier, self.scanned = -1, 0  # the last barrier among the first `scanned` lines

    def read_back(self, j: int, reads: set[int], lines: list[str]) -> None:
        self.held -= self.evicted_before.get(j, set())
        back = [self.parked[i] for i in sorted(reads & self.made_ids - self.held)]
        for k in range(self.scanned, len(lines)):
            if lines[k].startswith("tl.debug_barrier()"):
                self.barrier = k
        self.scanned = len(lines)
        if any(v.id not in self.reload for v in back) and self.stored_at > self.barrier:
            lines.append("tl.debug_barrier()  # parked tiles other threads stored")
        for v in back:
            if v.id in self.reread:
                lines += ["if REREAD_INPUTS:  # loaded again, not held since its last reader",
                          f"    {self.reload[v.id]}"]
            elif v.id in self.reload:
                _input_load(lines, f"{self.reload[v.id]}  # again, parked", v.id in self.held_inputs)
            else:
                lines.append(f"{name(v)} = tl.load({self.slot[v.id]} + {_offsets(v.axes, False)})  # parked")
        self.held |= {v.id for v in back}

    def made(self, values: list[Value], lines: list[str]) -> None:
        for v in values:
            if v.id in self.parked:
                if v.id not in self.reload and v.id not in self.relabelled:
                    lines.append(f"tl.store({self.slot[v.id]} + {_offsets(v.axes, False)}, {name(v)})  # park")
                    self.stored_at = len(lines)
                self.held.add(v.id)
                self.made_ids.add(v.id)


_HELD_HERE = "if not PARAMS_ONCE:  # else loaded once, before the chunk loop"


def _input_load(lines: list[str], line: str, held: bool) -> None:
    """Append an input's load; one that the kernel may instead load once before its chunk loop (`body`'s `held`)
    goes under `if not PARAMS_ONCE:`, the block just above if the last lines are one."""
    if not held:
        lines.append(line)
        return
    if len(lines) < 2 or lines[-2] != _HELD_HERE:
        lines.append(_HELD_HERE)
    lines.append(f"    {line}")


def _factors_read_from_park(tiles: list[Value], evicted: dict[int, set[int]], reload: dict[int, str]) -> set[int]:
    """Of the staged factors' tiles, those a channel-decay product reads from their park slots: parked with a store
    of their own, emitted where the tile is made (after its loop, for a sum over the hidden axis), so before any
    product reads it, and whose park layout is the staging layout (`stage`: row-major by the register extents; not a
    value-axis tile, parked D wide and held BV wide, nor a hidden-axis one). Their park store stages them: a staging
    store would write the same tile again."""
    return {z.id for z in tiles if z.id in evicted and z.id not in reload and all(SIZE[a] == SHAPE[a] for a in z.axes)}


def _decayed_product_lines(v: Value, slot: dict[int, str], staged: set[int], channel_blocks: bool) -> list[str]:
    """A channel-decay product: its staged factors stored to their slots (once per chunk, unless an earlier product
    stored them), then the product reading them; barriers around it, since every thread reads what other threads
    stored, and (in a kernel walking its chunks) the next chunk stores them again. The product gets the slots of its
    own staged factors only: another product's may not be stored yet; by channel blocks, a result with the channel
    axis its own slot too."""
    factors = staged_factors(v, channel_blocks)
    tiles = list({same_tile(z).id: same_tile(z) for z in factors}.values())
    lines = [stage(z, slot[z.id]) for z in tiles if z.id not in staged]
    staged.update(z.id for z in tiles)
    result_slot = slot[v.id] if channel_blocks and keeps_channel(v) else None
    return (lines + ["tl.debug_barrier()  # the slices below come from tiles other threads stored"] +
            _with_hint(v, decayed_product(v, {z.id: slot[z.id] for z in factors}, channel_blocks, result_slot)) +
            ["tl.debug_barrier()  # every slice read before the slots are written again"])


def _shared_accumulators(graph: Graph, loop_of: dict[int, int]) -> dict[int, Value]:
    """{term: sum} for each value that is a plain sum of contractions over the hidden axis made in one loop
    (`loop_of`: the loop each looped value is made in), where each term is read by that sum alone: the terms then
    accumulate into the sum's tile (the same additions in another order)."""
    readers = _readers(graph)
    outputs = {v.id for v in graph.outputs.values()}
    into: dict[int, Value] = {}
    for u in graph.values:
        terms = None if inlined(u) else summands(u)
        if (terms and len({t.id for t in terms}) == len(terms) and len({loop_of.get(t.id) for t in terms}) == 1
                and all(t.id in loop_of and reduces_hidden(t) and isinstance(t.op, ir.Einsum)
                        and readers.get(t.id) == 1 and t.id not in outputs for t in terms)):
            into.update({t.id: u for t in terms})
    return into


def _running_sums(segments: list[Value | _Loop], graph: Graph, excluded: set[int]) -> dict[int, Value]:
    """{term: sum} for each straight-line sum of register tiles with at least two terms that are straight-line
    values read by that sum alone (and not in `excluded`), where no channel-decay product comes between the first of
    them and the sum: each such term is added to the sum's tile where it is made, instead of every term
    holding its registers until the last is made (the same additions in another order). Without it, ptxas keeps
    the order of the additions as written: DeltaNet's key-gradient term 1 on sm_80 at D = 128, three (C, D) terms,
    spills 1,104 B with the sum at the end and 736 B with a running sum.

    Only in kernels without hidden-block loops. Ahead of time (mirasc aot, C = 64, bf16), stack bytes in all with
    running sums against without: the linear specs' kernels 848 B fewer over sm_90 and sm_80 at D = 64 and 128
    (DeltaNet sm_80 D = 128 1,488 against 1,856, TTT-Linear sm_80 D = 128 7,808 against 8,128, sm_90 D = 128 7,056
    against 7,216; TTT-Linear sm_90 D = 64 224 against 208; no other change); the MLP memories' kernels, which park
    tiles between their loops, 936 B more at sm_90, D = 64 (titans 2,688 against 2,576, Moneta 5,024 against 4,824,
    Memora 10,280 against 9,504, TTT-MLP 904 against 816, Yaad 2,880 against 3,120)."""
    if any(isinstance(seg, _Loop) for seg in segments):
        return {}
    readers = _readers(graph)
    at = {seg.id: j for j, seg in enumerate(segments)}
    barriers = [j for j, seg in enumerate(segments) if isinstance(seg.op, ir.DecayedProduct)]
    into: dict[int, Value] = {}
    for u in graph.values:
        terms = summands(u) if u.id in at and not inlined(u) and tile_units(u) > 0 else None
        if not terms or len({t.id for t in terms}) < len(terms):
            continue
        early = [t for t in terms if t.id in at and not inlined(t) and not isinstance(t.op, ir.Input)
                 and readers.get(t.id) == 1 and t.id not in excluded]
        first = min((at[t.id] for t in early), default=0)
        if len(early) >= 2 and not any(first < j < at[u.id] for j in barriers):
            into.update({t.id: u for t in early})
    return into


def _readers(graph: Graph) -> dict[int, int]:
    """How many values' lines read each value (mirasc.kernel_body._read)."""
    readers: dict[int, int] = {}
    for v in graph.values:
        for a in set(_read(v)):
            readers[a.id] = readers.get(a.id, 0) + 1
    return readers


def _read(v: Value) -> list[Value]:
    """The values v's lines read: its args, with an inlined arg (written where it is used) replaced by its own."""
    out = []
    for a in v.args:
        out += _read(a) if inlined(a) else [a]
    return out


# A value's extent in a scratch slot: its extent in memory, but the value axis's block (BV, which is D in a kernel
# that does not run by value blocks), since each block of value columns has a slot of its own.
SLOT_SIZE = {**SIZE, "o": "BV"}


def _slot_offset(kept: list[Value], k: int) -> str:
    """Where the k-th kept value's block starts in the slot: the sizes before it, each size counted once."""
    counts: dict[str, int] = {}
    for v in kept[:k]:
        size = " * ".join(SLOT_SIZE[a] for a in v.axes) or "1"
        counts[size] = counts.get(size, 0) + 1
    return " + ".join(size if n == 1 else f"{n} * {size}" for size, n in counts.items()) or "0"


def _with_hint(v: Value, lines: list[str]) -> list[str]:
    if lines and v.hint and not isinstance(v.op, (ir.Mask, ir.Input)):
        lines = [*lines[:-1], lines[-1] + f"  # {v.hint}"]
    return lines


__all__ = ["Body", "body", "load", "store"]
