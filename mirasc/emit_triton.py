"""emit (Triton): the kernels of a spec, from its chunk programs in dot form (mirasc.dotform).

A kernel program owns one sequence of one head and walks its chunks, so every IR value is a register tile shaped
by its axes in ir.AXIS_ORDER (no batch axis): token axes have the constexpr length C, channel axes D, hidden axes
HID. Every contraction is a `tl.dot` of two 2-D tiles (operands cast to DOT_DTYPE: bf16/fp16 as given, fp32 on
tf32 tensor cores unless DOT_PRECISION is "ieee", fp64 exact; fp32 accumulation, fp64 for fp64) or a product whose
tile has at most two axes; a value or product with three axes (a (C, C, D) tile) is refused, naming it. Channel
decay between tokens comes as ir.DecayedProduct, made by sub-chunks of BC tokens: exactly within one, by matrix
products across them (`decayed_product`).

The sequence length is a runtime argument (one compile serves every length): the chunk loop is a `while` over
the sequence's tokens. Sequences are rows of [rows, T, ...] inputs, or, with IS_VARLEN, segments
cu_seqlens[j]:cu_seqlens[j + 1] of one packed row per head (flash-linear-attention's convention). The last chunk
may be partial: its token tiles are loaded masked (q, k, v as 0, gates as 1, which keeps every intermediate
finite), and the causal structure of the chunk program makes the padded rows invisible to the real ones.
"""

from __future__ import annotations

import sympy as sp

from . import ir
from .dotform import is_dot, product_tile_axes
from .ir import Value
from .triton_printer import TritonPrinter

SIZE = {"t": "C", "s": "C", "u": "C", "o": "D", "i": "D", "h": "HID", "g": "HID"}  # an axis's extent in memory
# its extent in a register tile: the hidden axes go by blocks of BH, the value axis by blocks of BV (BV = D in a
# kernel that sums over it)
SHAPE = {**SIZE, "h": "BH", "g": "BH", "o": "BV"}
OFFS = {a: f"offs_{a}" for a in ir.AXIS_ORDER}
HIDDEN = ("h", "g")
_TILE_OPS = (ir.Input, ir.Elementwise, ir.Einsum, ir.Mask, ir.LogSumExp, ir.Cumsum, ir.Rename, ir.Broadcast,
             ir.TriInverse, ir.DecayedProduct)


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
    return _spread(name(v), v.axes, out_axes)


def _spread(expr: str, axes: tuple[str, ...], out_axes: tuple[str, ...]) -> str:
    """A tile over `axes` indexed with None for every axis of out_axes it lacks (same relative order: both
    canonical)."""
    if tuple(axes) == tuple(out_axes) or not axes:
        return expr
    return f"{expr}[{', '.join(':' if a in axes else 'None' for a in out_axes)}]"


def tile_shape(axes) -> str:
    """A register tile's shape over `axes`, as Triton source: "(C, BV)", "(BH,)"."""
    return "(" + ", ".join(SHAPE[a] for a in axes) + ("," if len(axes) == 1 else "") + ")"


def wide(v: Value) -> bool:
    """Whether v has a hidden axis, so lives in blocks of BH along it (mirasc.triton_kernels loops over them)."""
    found = set(v.axes) & set(HIDDEN)
    if len(found) > 1:
        raise NotImplementedError(f"{describe(v)}: two hidden axes (an MLP memory of depth 3 or more) are not in the "
                                  "Triton kernels yet")
    return bool(found)


def reduces_hidden(v: Value) -> bool:
    """A value computed from a wide one but not wide itself: a sum over the hidden axis, made block by block."""
    return not wide(v) and any(wide(a) for a in v.args)


def _dot(v: Value) -> str:
    """tl.dot for a matrix product (dotform.is_dot): operands in DOT_DTYPE, accumulation in DTYPE."""
    a, b = v.args
    return dot_expr(name(a), a.axes, name(b), b.axes, v.axes)


def dot_expr(lhs: str, lhs_axes: tuple[str, ...], rhs: str, rhs_axes: tuple[str, ...],
             out_axes: tuple[str, ...]) -> str:
    """tl.dot of two 2-D tiles over their shared axis, transposed as their axes and the result's require. A result
    whose rows are rhs's is made both ways, the constexpr SWAP_PRODUCTS choosing: the product transposed (the
    default) or the operands swapped (rhs first), which leaves the result in the tensor cores' own layout. Neither
    spills less in every kernel, so the launcher's spill guard picks per kernel (mirasc.backends.tuning)."""
    (kax,) = set(lhs_axes) & set(rhs_axes)
    x_ax = next(x for x in lhs_axes if x != kax)
    y_ax = next(x for x in rhs_axes if x != kax)
    product = _dot_call(_oriented(lhs, lhs_axes, (x_ax, kax)), _oriented(rhs, rhs_axes, (kax, y_ax)))
    if tuple(out_axes) == (x_ax, y_ax):
        return product
    swapped = _dot_call(_oriented(rhs, rhs_axes, (y_ax, kax)), _oriented(lhs, lhs_axes, (kax, x_ax)))
    return f"({swapped} if SWAP_PRODUCTS else tl.trans({product}))"


def _oriented(tile: str, axes: tuple[str, ...], wanted: tuple[str, str]) -> str:
    return tile if tuple(axes) == wanted else f"tl.trans({tile})"


def _dot_call(lhs: str, rhs: str) -> str:
    return f"tl.dot({lhs}.to(DOT_DTYPE), {rhs}.to(DOT_DTYPE), input_precision=DOT_PRECISION, out_dtype=DTYPE)"


def _einsum_expr(v: Value) -> str:
    if is_dot(v):
        return _dot(v)
    union = product_tile_axes(v)
    if len(v.args) == 1 and set(v.axes) == set(union):
        return name(v.args[0])
    expr = f"({' * '.join(align(a, union) for a in v.args)})"
    for j in reversed([j for j, a in enumerate(union) if a not in v.axes]):
        expr = f"tl.sum({expr}, axis={j})"
    return expr


def reduction_lines(v: Value, into: Value | None = None) -> tuple[list[str], list[str], list[str]]:
    """A sum over the hidden axis made block by block: (before the block loop, in it, after it). `into`: a sum of
    contractions v is a term of, accumulated in one tile (mirasc.kernel_body), which zeroes it once."""
    nm = name(v)
    if isinstance(v.op, ir.Einsum):
        target = name(into) if into is not None else nm
        return [f"{target} = tl.zeros({tile_shape(v.axes)}, DTYPE)"], [f"{target} += {_einsum_expr(v)}"], []
    if isinstance(v.op, ir.LogSumExp):  # online: a running maximum and the sum of exponentials below it
        a = v.args[0]
        k = a.axes.index(v.op.axis)
        keep = f"[{', '.join('None' if x == v.op.axis else ':' for x in a.axes)}]"
        shape = tile_shape(v.axes)
        below = f"tl.sum(tl.exp({name(a)} - {nm}_new{keep}), axis={k})"
        return ([f"{nm}_max = tl.full({shape}, float('-inf'), DTYPE)", f"{nm}_sum = tl.zeros({shape}, DTYPE)"],
                [f"{nm}_new = tl.maximum({nm}_max, tl.max({name(a)}, axis={k}))",
                 f"{nm}_sum = {nm}_sum * tl.exp({nm}_max - {nm}_new) + {below}", f"{nm}_max = {nm}_new"],
                [f"{nm} = {nm}_max + tl.log({nm}_sum)"])
    raise NotImplementedError(f"{describe(v)}: no block-by-block form for this reduction over the hidden axis")


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
    # temporaries named after their value: a name shared by two values would be one variable to Triton, and a
    # loop that assigns it a tile of another shape is refused on a GPU (the interpreter does not check)
    temps, (expr,) = sp.cse([v.op.expr], symbols=sp.numbered_symbols(f"{name(v)}_c"))
    env = {s: align(a, v.axes) for s, a in zip(syms, v.args)}
    lines = []
    for t, val in temps:
        lines.append(f"{t} = {TritonPrinter(env)(val)}")
        env[t] = str(t)
    lines.append(f"{name(v)} = {TritonPrinter(env)(expr)}")
    if not any(isinstance(a.op, _TILE_OPS) for a in v.args):  # only constants and sizes: make it a tile
        lines.append(f"{name(v)} = tl.full({tile_shape(v.axes)}, {name(v)}, DTYPE)")
    return lines


def staged_factors(v: Value, by_channel_blocks: bool = False) -> list[Value]:
    """The factors of an ir.DecayedProduct stored to the program's scratch memory (`stage`) for `decayed_product`:
    those it reads at another token's position (a partner's rows, or a (t, s) entry per row), and the log-decays a,
    whose rows at the sub-chunks' starts are the anchors; by channel blocks, every factor with the channel axis too,
    since a register tile cannot be read a block of columns at a time. (Summed over the channel, the product's
    result is the (t, s) tile and the mask is applied to it whole.)"""
    _, partner = _token_roles(v)
    x, y, a, b, mask = v.args
    chan = ir.decay_channel(v)
    by_channel = _summed_axis(v) == chan
    return [z for z in (x, y, mask, b) if (partner in z.axes or (by_channel_blocks and chan in z.axes))
            and not (z is mask and by_channel)] + [a]


def keeps_channel(v: Value) -> bool:
    """Whether an ir.DecayedProduct's result has the channel axis (a (t, s) matrix applied to a token tile), so that
    by channel blocks it is made a block of columns at a time and stored to a slot of its own."""
    return ir.decay_channel(v) in v.axes


def _summed_axis(v: Value) -> str:
    """The axis of (t, s, c) an ir.DecayedProduct sums over: the one its result lacks."""
    (m,) = {"t", "s", ir.decay_channel(v)} - set(v.axes)
    return m


def _token_roles(v: Value) -> tuple[str, str]:
    """(own, partner): the token axis a step of the within-sub-chunk loop keeps whole (the result's, t where it holds
    both) and the one it reads one position per row of (its partner token in the same sub-chunk)."""
    return ("s", "t") if _summed_axis(v) == "t" else ("t", "s")


def same_tile(z: Value) -> Value:
    """The value whose register tile z is: z itself, or, for a relabelling that keeps the axes' order (a (t, c) tile
    read as (s, c)), the value it relabels."""
    while isinstance(z.op, ir.Rename):
        mapping = dict(z.op.mapping)
        if [mapping.get(x, x) for x in z.args[0].axes] != list(z.axes):
            break
        z = z.args[0]
    return z


def _local_offsets(axes: tuple[str, ...], index: dict[str, str] | None = None) -> str:
    """Offsets of a tile stored row-major by its register extents (SHAPE), from its slot's start; an axis in `index`
    is read at that expression's positions only (a block of channel columns) instead of its whole extent."""
    at = [(index or {}).get(a, f"tl.arange(0, {SHAPE[a]})") for a in axes]
    if len(axes) == 1:
        return at[0]
    return f"{at[0]}[:, None] * {SHAPE[axes[1]]} + {at[1]}[None, :]"


def stage(z: Value, base: str) -> str:
    """The line storing z's tile at `base` (row-major by its register extents) for `decayed_product`."""
    return f"tl.store({base} + {_local_offsets(z.axes)}, {name(z)})"


def decayed_product(v: Value, bases: dict[int, str], by_channel_blocks: bool = False,
                    result_slot: str | None = None) -> list[str]:
    """ir.DecayedProduct, Σ over the axis m its result lacks of x·y·e^{a[t, c] − b[s, c]}·mask[t, s], by sub-chunks of
    BC tokens (the scheme of flash-linear-attention's chunk_gla; derivation in docs/compiler.md):

    - pairs (t, s) in one sub-chunk: BC steps, step j pairing each row with the j-th token of its sub-chunk, a
      (C, channels) tile of exponentials each, exact (the exponent clamped at 0 only where the mask is 0);
    - pairs with s in an earlier sub-chunk than t, which starts at r: e^{a[t] − b[s]} = e^{a[t] − a[r]}·e^{a[r] − b[s]},
      both exponents ≤ 0 (a falls along t; a[r] ≤ b[s] wherever mask[r, s] holds, and it holds for every s < r), so
      one matrix product per sub-chunk of rows on the tensor cores, nothing that overflows.

    (C/BC + 1 + BC)·C·D exponentials where a position at a time of the summed axis takes C·C·D. The factors read at
    another token's position, and a (whose rows at the sub-chunks' starts are the anchors), come from the program's
    scratch memory (bases: their slots).

    By channel blocks (`by_channel_blocks`, in an MLP memory's kernels), all of it runs once per block of BK channel
    columns, every factor with the channel axis read from scratch by that block: whole, the steps' (C, channels)
    tiles at D = 128 held 32 registers a thread each (8 warps) and Yaad's key-gradient term spilled 552 B a thread
    at sm_90a, all of it on these lines. A result summed over the channel adds up the blocks' products; one that
    keeps the channel is stored a block at a time to `result_slot` and read back whole."""
    x, y, a, b, mask = v.args
    if not (isinstance(mask.op, ir.Mask) and mask.op.kind in ("causal", "strict")):
        raise NotImplementedError(f"{describe(v)}: a channel-decay product needs a causal or strict mask, got "
                                  f"{describe(mask)}")
    m, chan = _summed_axis(v), ir.decay_channel(v)
    own, partner = _token_roles(v)
    nm, width, pos = name(v), SHAPE[chan], "tl.arange(0, C)"
    cols = {chan: f"{nm}_c"} if by_channel_blocks else {}
    blocked_result = by_channel_blocks and m != chan
    acc = f"{nm}_block" if blocked_result else nm  # the tile the pairs add into
    work = ir.canonical((own, chan))  # a within-sub-chunk step's tile: each row of `own` against its partner

    def rows(base: str, index: str) -> str:
        """The (C, channels) tile of a staged (token, c) factor's rows at `index`."""
        return f"tl.load({base} + {index}[:, None] * {width} + {cols.get(chan, f'tl.arange(0, {width})')}[None, :])"

    loads: list[str] = []
    held: list[str] = []  # by channel blocks: the block of a factor without the partner axis, for every step
    loaded: dict[str, str] = {}  # address -> the tile loaded from it (a and b may be one tile)

    def paired(z: Value, label: str) -> str:
        """z at (row, its partner) aligned to `work`: whole where it lacks the partner axis (by channel blocks, its
        block read from scratch once, before the steps), else read from scratch."""
        if partner not in z.axes:
            if not (by_channel_blocks and chan in z.axes):
                return align(z, work)
            held.append(f"{nm}_{label}w = tl.load({bases[z.id]} + {_local_offsets(z.axes, cols)})")
            return _spread(f"{nm}_{label}w", z.axes, work)
        if chan in z.axes:
            address = rows(bases[z.id], f"{nm}_p")
        else:  # (t, s): the entry of each row's partner
            t_index, s_index = (pos, f"{nm}_p") if own == "t" else (f"{nm}_p", pos)
            address = f"tl.load({bases[z.id]} + {t_index} * C + {s_index})"
        if address not in loaded:
            loaded[address] = f"{nm}_{label}"
            loads.append(f"    {nm}_{label} = {address}")
        return loaded[address] if chan in z.axes else f"{loaded[address]}[:, None]"

    factors = [paired(x, "x"), paired(y, "y")] + ([paired(mask, "m")] if m != chan else [])
    term = f"{' * '.join(factors)} * tl.exp(tl.minimum({paired(a, 'a')} - {paired(b, 'b')}, 0.0))"
    if m == chan:  # a (t, s) result: each row's sum over c goes to its partner's column
        add = [f"    {nm}_d = tl.sum({term}, axis={work.index(chan)})",
               f"    {acc} += tl.where({pos}[None, :] == {nm}_p[:, None], {nm}_d[:, None], 0.0)"]
    else:
        add = [f"    {acc} += {term}"]
    zeros = f"{acc} = tl.zeros(({', '.join('BK' if ax in cols else SHAPE[ax] for ax in v.axes)}), DTYPE)"
    starts = f"{nm}_r = ({pos} // BC) * BC  # where each token's sub-chunk starts"
    pairs = [*_across_sub_chunks(v, bases, rows(bases[a.id], f"{nm}_r"), acc, cols), *held,
             f"for {nm}_j in range(0, BC):  # pairs in one sub-chunk: each row and the j-th token of its sub-chunk",
             f"    {nm}_p = {nm}_r + {nm}_j", *loads, *add]
    loop = [f"for {nm}_cb in range(0, {width}, BK):  # the channels, a block of BK columns at a time",
            f"    {nm}_c = {nm}_cb + tl.arange(0, BK)"]
    if not by_channel_blocks:
        lines = [zeros, starts, *pairs]
    elif not blocked_result:  # the blocks' sums add into one (t, s) tile
        lines = [starts, zeros, *loop, *["    " + x for x in pairs]]
    else:  # each block's columns stored where they belong, the whole tile read back after the last
        block = [zeros, *pairs, f"tl.store({result_slot} + {_local_offsets(v.axes, cols)}, {acc})"]
        lines = [starts, *loop, *["    " + x for x in block], "tl.debug_barrier()  # the blocks other threads stored",
                 f"{nm} = tl.load({result_slot} + {_local_offsets(v.axes)})"]
    return lines + ([f"{nm} = {nm} * {name(mask)}"] if m == chan else [])


def _across_sub_chunks(v: Value, bases: dict[int, str], anchor_rows: str, acc: str,
                       cols: dict[str, str]) -> list[str]:
    """The pairs of `decayed_product` with s in an earlier sub-chunk than t: per sub-chunk k of rows t (from r = k·BC),
    a matrix product of the factors with e^{a[t] − a[r]} and e^{a[r] − b[s]}·[s < r], each put on the operand that
    holds the summed axis, or on the result. The first, the same for every k, is applied once, outside the loop (on
    an operand before it, on the result after it), so that it holds no registers across the loop; a factor stored in
    scratch memory is read from there, so that its register tile need not live through the loop either. `acc`: the
    tile the products add into; `cols`: the channel block's columns, by channel blocks."""
    x, y, a, b, _ = v.args
    m, chan = _summed_axis(v), ir.decay_channel(v)
    nm, width, pos = name(v), SHAPE[chan], "tl.arange(0, C)"

    def whole(z: Value) -> str:
        return f"tl.load({bases[z.id]} + {_local_offsets(z.axes, cols)})" if z.id in bases else name(z)

    anchor = f"tl.load({bases[a.id]} + {nm}_start * {width} + {cols.get(chan, f'tl.arange(0, {width})')})"
    lines = [f"{nm}_A = tl.exp(tl.minimum({whole(a)} - {anchor_rows}, 0.0))  # e^(a[t] - a at t's sub-chunk start)"]
    operands, per_block, after = [[whole(x)], [whole(y)]], [], []
    for expr, axes, fixed in ((f"{nm}_A", a.axes, True), (f"{nm}_B", b.axes, False), (f"{nm}_rows", ("t",), False)):
        if m not in axes:
            (after if fixed else per_block).append(_spread(expr, axes, v.axes))  # the result's
            continue
        k = 0 if set(axes) <= set(x.axes) else 1
        if fixed:
            lines.append(f"{nm}_{'xy'[k]}A = {operands[k][0]} * {_spread(expr, axes, (x, y)[k].axes)}")
            operands[k][0] = f"{nm}_{'xy'[k]}A"
        else:
            operands[k].append(_spread(expr, axes, (x, y)[k].axes))
    sides = [(f"({' * '.join(ops)})", z.axes) for ops, z in zip(operands, (x, y))]
    if v.axes[0] not in x.axes:  # the operand holding the result's rows first: no transposed result
        sides.reverse()
    product = " * ".join([*per_block, dot_expr(*sides[0], *sides[1], v.axes)])
    lines += [f"for {nm}_k in range(1, C // BC):  # the rows of sub-chunk k against every earlier token",
              f"    {nm}_start = {nm}_k * BC",
              f"    {nm}_B = tl.where({pos}[:, None] < {nm}_start, "
              f"tl.exp(tl.minimum({anchor}[None, :] - {whole(b)}, 0.0)), 0.0)",
              f"    {nm}_rows = tl.where({pos} // BC == {nm}_k, 1.0, 0.0)",
              f"    {acc} += {product}"]
    return lines + [f"{acc} = {acc} * {factor}" for factor in after]


def line(v: Value) -> list[str]:  # noqa: C901 - one case per op
    op, nm = v.op, name(v)
    if len(v.axes) > 2 or len(product_tile_axes(v) if isinstance(op, ir.Einsum) else ()) > 2:
        raise CubeTileError(f"{describe(v)}: a tile with three axes (C·C·D or more per program) has no place in a GPU "
                            "kernel; the chunk program needs a form without it (e.g. channel decay as "
                            "ir.DecayedProduct)")
    if isinstance(op, (ir.Input, ir.Size)) or inlined(v):
        return []
    if isinstance(op, ir.Const):
        return [f"{nm} = {align(v, ())}"]
    if isinstance(op, ir.Elementwise):
        return _elementwise(v)
    if isinstance(op, ir.Einsum):
        return [f"{nm} = {_einsum_expr(v)}"]
    if isinstance(op, ir.TriInverse):
        return _tri_inverse(v)
    if isinstance(op, ir.DecayedProduct):
        raise TypeError(f"{describe(v)}: made by mirasc.kernel_body (decayed_product), which stages its factors")
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
            return [f"{nm} = tl.full({tile_shape(v.axes)}, {align(a, ())}, DTYPE)"]
        return [f"{nm} = tl.broadcast_to({align(a, v.axes)}, {tile_shape(v.axes)})"]
    raise TypeError(f"no Triton emission for {describe(v)}")
