"""A chunk's program made a sub-chunk of BC tokens at a time ("token blocks"): a state pass that holds its state in
registers, and a gradient term, where their work is per token.

TTT-Linear's state passes cannot split the value axis (its LayerNorm sums over it), so each program holds the whole
(D, D) state and every (C, D) tile of the chunk's inner-loss gradient: at D = 128 they spilled 672 and 1,896 B a
thread at sm_90a (C = 64, bf16, with the spill guard's best configs). Between the chunk's start state and its end
state the work is per token, though: every (C, D) tile is made row by row from the token's own inputs, and the
tokens meet only in the products that sum over the chunk (Σ_t g_tᵀ k_t). So the chunk runs in sub-chunks: each
sub-chunk's rows are made from its own inputs' rows, and the products over its tokens are added into one
accumulator. Each (C, D) tile is then a (BC, D) one, BC = 16 on a GPU: both passes compile without spills at
sm_90a, D = 64 and 128, with the spill guard's configs (the backward pass's default spills 16 B at D = 128; at sm_80
they still spill, less than whole: bench/README.md, "TTT-Linear's state passes by sub-chunks"). BC is the launcher's
sub-chunk, as for the channel-decay products (mirasc.backends.triton.sub_chunk; 4 on the interpreter, so that a
test's chunk of 16 runs four sub-chunks). A gradient term of the same kind (TTT-Linear's LayerNorm terms, a (C, D)
token tile made per token) is made and stored a sub-chunk at a time the same way: its third key-gradient term
spilled 80 B at sm_90a, D = 128 and 208 at sm_80 with the guard's best configs whole, none by sub-chunks. There an
input the kernel loads from memory without a token axis (the state's adjoint) and what is made from it elementwise
(-ΔW) are made inside the loop, where the products over the head axis take them by blocks, rather than held
through it.

The chunk's program is cut in three (`_Plan`):

  before  values with no per-token data: the state, parameters, and token vectors made from masks and gates alone
          (a vector that mixes tokens, such as a sum over a mask's rows, is made whole here and read back by
          sub-chunks through the program's scratch memory: Triton cannot slice a register tile);
  rows    values made per token from the token inputs' rows, and the sums over the chunk's tokens (`sums`), each a
          product of two rows, added up across the sub-chunks;
  after   what the sums make (the end state, the adjoint entering the chunk).

An output that is a row (a gradient term) is stored in the loop, a sub-chunk at a time. A program it does not fit (a
value mixing the rows of two tokens, a row the `after` part or an output the loop does not store reads) keeps the
whole chunk (`token_blocked_body` returns None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp

from . import ir
from .emit_triton import OFFS, SHAPE, name, tile_shape
from .ir import Graph, Value
from .kernel_body import Body

_ARGLESS = (ir.Const, ir.Size, ir.Mask)  # made wherever they are read (no data)


@dataclass
class _Plan:
    before: set[int] = field(default_factory=set)
    rows: set[int] = field(default_factory=set)
    sums: list[Value] = field(default_factory=list)  # sums over the chunk's tokens of a product of rows
    sum_ids: set[int] = field(default_factory=set)
    after: set[int] = field(default_factory=set)


def _tokens(v: Value) -> set[str]:
    return set(v.axes) & set(ir.TOKEN_AXES)


def _row_op(v: Value, row_args: list[Value]) -> bool:
    """Whether v, which reads the rows `row_args`, is made token by token: one token axis, shared by those rows."""
    if len(_tokens(v)) != 1 or isinstance(v.op, (ir.Cumsum, ir.LogSumExp, ir.TriInverse)):
        return False
    (axis,) = _tokens(v)
    if isinstance(v.op, ir.Rename):
        return True  # a row relabelled (t -> s) is the same row
    return all(_tokens(a) == {axis} for a in row_args) and all(len(_tokens(a)) <= 1 for a in v.args)


def _token_sum(v: Value, row_args: list[Value]) -> bool:
    """Whether v sums a product of rows over their one token axis, keeping no token axis."""
    if not isinstance(v.op, ir.Einsum) or _tokens(v):
        return False
    rows = {a.id for a in row_args}
    axes = {frozenset(_tokens(a)) for a in v.args}
    return len(axes) == 1 and len(next(iter(axes))) == 1 and all(a.id in rows or not _tokens(a) for a in v.args)


def plan(graph: Graph, stored: frozenset[str] = frozenset()) -> _Plan | None:
    """The cut of a chunk's program (module doc), or None where it does not fit. `stored`: the outputs the loop may
    store a sub-chunk at a time, which may be rows."""
    p = _Plan()
    for v in graph.values:
        if isinstance(v.op, _ARGLESS):
            continue
        if isinstance(v.op, ir.Input):
            if len(_tokens(v)) > 1:
                return None
            (p.rows if _tokens(v) else p.before).add(v.id)
            continue
        rows = [a for a in v.args if a.id in p.rows]
        if any(a.id in p.sum_ids or a.id in p.after for a in v.args):
            if rows or _tokens(v):
                return None
            p.after.add(v.id)
        elif not rows:
            p.before.add(v.id)
        elif _token_sum(v, rows):
            p.sums.append(v)
            p.sum_ids.add(v.id)
        elif _row_op(v, rows):
            p.rows.add(v.id)
        else:
            return None
    row_outputs = {n for n, v in graph.outputs.items() if v.id in p.rows}
    if not (p.sums or row_outputs) or not row_outputs <= stored:
        return None
    if any(_tokens(v) and v.id not in p.rows for v in graph.outputs.values()):
        return None
    return p


def _signed_terms(v: Value, sums: set[int]) -> dict[int, int] | None:
    """The sign of each arg (by position) where v is a plain sum of its args with signs ±1 and adds up sums, else
    None."""
    if not isinstance(v.op, ir.Elementwise) or not any(a.id in sums for a in v.args):
        return None
    syms = ir.arg_symbols(len(v.args))
    expr = sp.expand(v.op.expr)
    signs = {}
    for j, s in enumerate(syms):
        c = expr.coeff(s)
        if c not in (1, -1):
            return None
        signs[j] = int(c)
    if sp.expand(expr - sum(signs[j] * s for j, s in enumerate(syms))) != 0:
        return None
    return signs


class _Cut:
    """The three graphs of a plan, each value of the program mapped into the graph that makes it; a value one graph
    makes and a later one reads crosses as an input of a name of its own."""

    def __init__(self, graph: Graph, p: _Plan, loads: dict[str, str]):
        self.graph, self.plan, self.loads = graph, p, loads
        self.before, self.rows, self.after = Graph(), Graph(), Graph()
        self.crossing: dict[int, str] = {}  # value id -> the name it crosses as
        self.mapped: dict[tuple[int, int], Value] = {}  # (graph id, value id) -> value there

    def part_of(self, v: Value) -> Graph:
        if v.id in self.plan.rows or v.id in self.plan.sum_ids:
            return self.rows
        return self.after if v.id in self.plan.after else self.before

    def add(self, v: Value, into: Graph) -> Value:
        key = (id(into), v.id)
        if key in self.mapped:
            return self.mapped[key]
        if isinstance(v.op, ir.Input) and self.part_of(v) is into:
            made = into.inputs.get(v.op.name) or into.input(v.op.name, v.axes, v.batched)
        elif isinstance(v.op, _ARGLESS) or self.part_of(v) is into or (into is self.rows and self.remade(v)):
            made = into._add(v.op, tuple(self.add(a, into) for a in v.args), v.axes, v.batched, v.hint)
        else:  # made in an earlier graph: read here by its crossing name
            if isinstance(v.op, ir.Input):
                made = into.inputs.get(v.op.name) or into.input(v.op.name, v.axes, v.batched)
            else:
                cross = self.crossing.setdefault(v.id, f"blk_{len(self.crossing)}")
                made = into.inputs.get(cross) or into.input(cross, v.axes, v.batched)
        self.mapped[key] = made
        return made

    def remade(self, v: Value) -> bool:
        """Whether the loop makes v again from inputs it loads (-ΔW from the adjoint's rows) rather than holding it
        through every sub-chunk: there the products over the head axis take it by blocks (mirasc.kernel_body,
        "head-axis blocks"). An input the kernel holds in registers (a state pass's state) is not reloaded."""
        if isinstance(v.op, ir.Input):
            return self.loads.get(v.op.name, "").startswith("tl.load(")
        return (isinstance(v.op, (ir.Elementwise, ir.Rename)) and not _tokens(v)
                and all(isinstance(a.op, _ARGLESS) or self.remade(a) for a in v.args))


def _adder(graph: Graph, p: _Plan) -> tuple[Value, dict[int, int]] | None:
    """The one value that adds up every sum, plainly (each sum read by it alone), and each sum's sign there; None
    where there is none. Its other terms start the accumulator, so that the sums share one tile: a (D, D) fp32 tile
    each, two took TTT-Linear's backward pass at sm_90a, D = 128 from 0 to 328 B of stack (by hand)."""
    readers: dict[int, list[Value]] = {}
    for v in graph.values:
        for a in v.args:
            readers.setdefault(a.id, []).append(v)
    sums = p.sums
    users = {u.id: u for s in sums for u in readers.get(s.id, [])}
    if len(users) != 1 or any(len(readers.get(s.id, [])) != 1 for s in sums):
        return None
    (u,) = users.values()
    ids = p.sum_ids
    terms = _signed_terms(u, ids)
    if terms is None or sum(a.id in ids for a in u.args) != len(sums):  # not plain, or a sum added twice
        return None
    if any(a.id not in ids and a.id not in p.before and not isinstance(a.op, _ARGLESS) for a in u.args):
        return None  # a term the pass makes only after the sums
    return u, {a.id: terms[j] for j, a in enumerate(u.args) if a.id in ids}


def token_blocked_body(graph: Graph, loads: dict[str, str], emit, stores: dict[str, str] | None = None) -> Body | None:
    """The lines of a chunk made a sub-chunk of BC tokens at a time (module doc), or None where the program does not
    fit. emit(graph, loads) -> Body: the kernel's own body maker, for each of the three parts. stores: the store of
    an output (a token tile: a gradient term) that the loop makes a sub-chunk at a time (named in the result's
    `stored`). The other outputs end in the variables `name(graph.outputs[n])`, as the caller of a plain body reads
    them."""
    stores = stores or {}
    p = plan(graph, frozenset(stores))
    if p is None:
        return None
    cut = _Cut(graph, p, loads)
    adder = _adder(graph, p)
    accumulators = ["acc_0"] if adder else [f"acc_{j}" for j in range(len(p.sums))]
    signs = adder[1] if adder else {s.id: 1 for s in p.sums}
    slot_of = {s.id: accumulators[0] if adder else accumulators[j] for j, s in enumerate(p.sums)}
    after_in = [adder[0]] if adder else p.sums
    for j, v in enumerate(after_in):
        cut.mapped[(id(cut.after), v.id)] = cut.after.input(accumulators[j], v.axes, v.batched)
    row_outputs = {n: v for n, v in graph.outputs.items() if v.id in p.rows}
    cut.rows.outputs = {f"sum_{j}": cut.add(s, cut.rows) for j, s in enumerate(p.sums)}
    cut.rows.outputs.update({f"row_{n}": cut.add(v, cut.rows) for n, v in row_outputs.items()})
    cut.after.outputs = {n: cut.add(v, cut.after) for n, v in graph.outputs.items() if n not in row_outputs}
    staged = [vid for vid, n in cut.crossing.items() if (id(cut.rows), vid) in cut.mapped
              and _tokens(graph.values[vid])]
    start = None
    if adder:
        u, _ = adder
        syms = ir.arg_symbols(len(u.args))
        others = [(x, a) for x, a in zip(syms, u.args) if a.id not in signs]
        renamed = dict(zip((x for x, _ in others), ir.arg_symbols(len(others))))
        zeroed = u.op.expr.xreplace({x: 0 for x, a in zip(syms, u.args) if a.id in signs}).xreplace(renamed)
        others = [a for _, a in others]
        start = cut.before.ew(zeroed, *(cut.add(a, cut.before) for a in others)) if others else None
    cut.before.outputs = {n: cut.add(graph.values[vid], cut.before) for vid, n in list(cut.crossing.items())}
    if start is not None:
        cut.before.outputs["acc_start"] = start
    row_stores = {n: stores[n].replace(f"{name(v)}.to(", f"{{{n}}}.to(") for n, v in row_outputs.items()}
    return _lines(cut, p, loads, emit, accumulators, signs, slot_of, staged, start is not None, row_stores)


def _in_sub_chunk(line: str) -> str:
    """A line of the sub-chunk loop with names of its own: the token axes' offsets (sub_t: the sub-chunk's), and
    the values (r12 for v12). Triton's loops keep a variable's type through their iterations, so the loop cannot
    rebind offs_t (C long) to a sub-chunk's offsets (BC long), nor reuse a value name the lines before it took for
    a tile of another shape; unrolled instead (tl.static_range), TTT-Linear's passes spilled more than whole (sm_80,
    D = 128: 4,888 B)."""
    line = re.sub(r"\boffs_([tsu])\b", r"sub_\1", line)
    return re.sub(r"\bv(\d+)\b", r"r\1", line)


class _TokenShapes:
    """Within the sub-chunk loop a token axis's register tiles are BC long (emit_triton.SHAPE)."""

    def __enter__(self):
        self.saved = {a: SHAPE[a] for a in ir.TOKEN_AXES}
        SHAPE.update({a: "BC" for a in ir.TOKEN_AXES})

    def __exit__(self, *exc):
        SHAPE.update(self.saved)


def _lines(cut: _Cut, p: _Plan, loads: dict[str, str], emit, accumulators: list[str], signs: dict[int, int],
           slot_of: dict[int, str], staged: list[int], started: bool, row_stores: dict[str, str]) -> Body | None:
    """The three parts' lines around the sub-chunk loop (`token_blocked_body`): `accumulators` the sums' tiles,
    `signs` and `slot_of` each sum's sign and tile, `staged` the vectors read by sub-chunks, `started` whether the
    one accumulator starts from the other terms of the value adding the sums (`acc_start`), `row_stores` the stores
    of the outputs made in the loop ({n} standing for the tile)."""
    graph = cut.graph
    first = emit(cut.before, loads)
    stage = {cut.crossing[vid]: (f"tok_scratch + {k} * C", next(iter(_tokens(graph.values[vid]))))
             for k, vid in enumerate(staged)}
    with _TokenShapes():
        rows = emit(cut.rows, {**loads, **{n: f"tl.load({at} + {OFFS[axis]})" for n, (at, axis) in stage.items()}})
    last = emit(cut.after, loads)
    if first.scratch or rows.scratch or last.scratch:
        return None  # the parts' own scratch memory would overlap the staged vectors'
    lines = list(first.lines)
    made = {n: name(v) for n, v in cut.before.outputs.items()}
    lines += [f"{n} = {made[n]}" for n in made if n != "acc_start" and n not in stage]  # (a staged vector's name
    if stage:  # is the loop's own: its sub-chunk, read from scratch memory)
        lines.append(f"tok_scratch = scratch_ptr + slot * ({len(stage)} * C)  # token vectors read by sub-chunks")
        lines += [f"tl.store({at} + {OFFS[axis]}, {made[n]})" for n, (at, axis) in stage.items()]
        lines.append("tl.debug_barrier()  # other threads read them by sub-chunks")
    if started:
        lines.append(f"acc_0 = {name(cut.before.outputs['acc_start'])}  # the end state's terms besides the sums")
    else:
        lines += [f"{acc} = tl.zeros({tile_shape(s.axes)}, dtype=DTYPE)" for acc, s in zip(accumulators, p.sums)]
    lines.append("for tb in range(0, C, BC):  # the chunk's tokens, a sub-chunk at a time")
    lines += [f"    {_in_sub_chunk(OFFS[a])} = tb + tl.arange(0, BC)" for a in ir.TOKEN_AXES]
    lines += ["    " + _in_sub_chunk(x) for x in rows.lines]
    for j, s in enumerate(p.sums):
        op = "+=" if signs[s.id] > 0 else "-="
        lines.append(f"    {slot_of[s.id]} {op} {_in_sub_chunk(name(cut.rows.outputs[f'sum_{j}']))}")
    for n, line in row_stores.items():
        lines.append("    " + _in_sub_chunk(line.replace(f"{{{n}}}.to(", f"{name(cut.rows.outputs[f'row_{n}'])}.to(")))
    if stage:
        lines.append("tl.debug_barrier()  # every sub-chunk read its vectors before the next chunk writes them")
    lines += last.lines
    renamed = [(name(v), name(cut.after.outputs[n])) for n, v in graph.outputs.items() if n not in row_stores]
    renamed = [(old, new) for old, new in renamed if old != new]
    lines += [f"out_{j} = {new}" for j, (_, new) in enumerate(renamed)]  # (one output's name may be another's)
    lines += [f"{old} = out_{j}" for j, (old, _) in enumerate(renamed)]
    scratch = [tuple(_tokens(graph.values[vid])) for vid in staged]
    return Body(lines, scratch, max(first.tiles, rows.tiles, last.tiles), True, frozenset(row_stores))
